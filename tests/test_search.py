"""wb search end to end: trials as MLflow child runs one to one, pruning on the seeds' mean, resume after
a kill without running a finished trial again, the confirmation study and the report."""
import math
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import RunConfig, with_overrides
from workbench.run.train import train
from workbench.stores.urls import default_stores
from workbench.study.study import load_study

from conftest import tiny_study


def tiny_search(steps: int, search: str) -> str:
    """conftest's tiny study without its axis, evaluated every 20 steps, with a [search] section."""
    base = tiny_study(steps, "", '"eval.every" = 20\n"eval.num_samples_during" = 200').split("[[axes]]")[0]
    return base.replace('description = "end-to-end test study"', 'description = "end-to-end search test"') + \
        f"[search]\n{search}"


# lr 1e-6 leaves the network at its initialization: every such trial is worse than every lr = 1e-2 one.
GRID = """trials = 8
sampler = "grid"
pruner = "median"
[search.space]
"optim.lr" = {choices = [1e-2, 1e-6]}
"meanflow.ratio" = {low = 0.0, high = 0.75, step = 0.25}
"""


def write(path: Path, search: str = GRID, steps: int = 60) -> Path:
    path.write_text(tiny_search(steps, search))
    return path


def recorded(folder: Path):
    """(Optuna trials of the search, the search's MLflow child runs) in the stores under folder."""
    stores = default_stores(f"sqlite:///{folder / 'optuna.db'}", f"sqlite:///{folder / 'mlflow.db'}")
    trials = optuna.load_study(study_name="tiny.search", storage=stores.storage).get_trials()
    client = MlflowClient(stores.tracking_uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([experiment], "tags.`wb.trial` != ''", max_results=1000)
    return trials, runs


STATES = {TrialState.COMPLETE: ("FINISHED", "complete"), TrialState.PRUNED: ("KILLED", "pruned"),
          TrialState.FAIL: ("FAILED", "failed")}


def assert_one_to_one(trials, runs, seeds=(0, 1)):
    """Every trial has one child run per seed, in the MLflow status and tag of its Optuna state."""
    by_trial = {}
    for run in runs:
        by_trial.setdefault(int(run.data.tags["wb.trial"]), []).append(run)
    assert sorted(by_trial) == sorted(t.number for t in trials)
    for trial in trials:
        mine = by_trial[trial.number]
        assert sorted(int(r.data.tags["wb.seed"]) for r in mine) == list(seeds), trial.number
        assert {(r.info.status, r.data.tags["wb.trial_state"]) for r in mine} == {STATES[trial.state]}, trial.number
        assert sorted(r.info.run_id for r in mine) == sorted(trial.user_attrs["mlflow_run_ids"])


def test_grid_search_finds_the_learning_rate_that_learns_prunes_the_others_and_records_one_to_one(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write(tmp_path / "tiny.toml", GRID)
    result = CliRunner().invoke(app, ["search", str(study), "--workers", "1"])
    assert result.exit_code == 0, result.output
    trials, runs = recorded(tmp_path)
    assert len(trials) == 8 and len(runs) == 16
    assert_one_to_one(trials, runs)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value)
    assert best.params["optim.lr"] == 1e-2
    # The grid runs the four lr = 1e-2 points first (they start the median pruner: 4 startup trials);
    # each lr = 1e-6 point is worse than all of them at the first evaluation, so the pruner stops it there.
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert {t.params["optim.lr"] for t in pruned} == {1e-6} and len(pruned) == 4
    assert all(list(t.intermediate_values) == [20] for t in pruned)
    for trial in complete:  # the value is the mean over the seeds' final scores
        finals = [r.data.metrics["energy_1nfe"] for r in runs if r.data.tags["wb.trial"] == str(trial.number)]
        assert trial.value == pytest.approx(sum(finals) / 2)
        assert sorted(trial.user_attrs["seed_values"]) == pytest.approx(sorted(finals))
    # The pruner saw the seeds' mean at each evaluation step, not one seed.
    for trial in trials:
        steps = {}
        for run in (r for r in runs if r.data.tags["wb.trial"] == str(trial.number)):
            for m in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run.info.run_id,
                                                                                            "energy_1nfe"):
                steps.setdefault(m.step, []).append(m.value)
        for step, value in trial.intermediate_values.items():
            assert value == pytest.approx(sum(steps[step]) / 2)

    confirm = load_study(tmp_path / "tiny-confirm.toml")  # best against base, fresh seeds
    assert confirm.seeds == (2, 3, 4) and confirm.metric == "energy_1nfe"
    (axis,) = confirm.axes
    base = with_overrides(RunConfig(), confirm.base)
    assert axis.keys == ("optim.lr", "meanflow.ratio")
    assert axis.values == ((1e-2, best.params["meanflow.ratio"]), (base.optim.lr, base.meanflow.ratio))
    assert "Confirm: wb ablate" in result.output

    page = (tmp_path / "reports/tiny/search.md").read_text()
    assert "8 (4 complete, 4 pruned, 0 failed, 0 running or queued) of 8" in page
    assert "pruning: 4 trials stopped early" in page and "Not run yet" in page
    for figure in ("history.png", "importances.png", "slice.png", "intermediate.png", "best_samples.png"):
        assert (tmp_path / "reports/tiny/search" / figure).is_file(), figure

    again = CliRunner().invoke(app, ["search", str(study), "--workers", "1", "--no-report"])  # all done
    assert again.exit_code == 0 and len(recorded(tmp_path)[0]) == 8


def test_a_rerun_adds_trials_up_to_the_new_count_and_confirmation_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write(tmp_path / "tiny.toml", 'trials = 2\nsampler = "random"\npruner = "none"\n[search.space]\n'
                                          '"meanflow.ratio" = {low = 0.0, high = 1.0}\n', steps=30)
    assert CliRunner().invoke(app, ["search", str(study), "--workers", "2", "--no-report"]).exit_code == 0
    more = CliRunner().invoke(app, ["search", str(study), "--workers", "2", "--trials", "3", "--no-report"])
    assert more.exit_code == 0, more.output
    trials, runs = recorded(tmp_path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 and len(runs) == 6
    assert_one_to_one(trials, runs)
    assert all(list(t.intermediate_values) == [20] for t in trials)  # reported for the plots, never pruned

    confirm = CliRunner().invoke(app, ["ablate", str(tmp_path / "tiny-confirm.toml"), "--workers", "2", "--no-report"])
    assert confirm.exit_code == 0, confirm.output
    report = CliRunner().invoke(app, ["report", "tiny"])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "reports/tiny/search.md").read_text()
    assert "## Confirmation on fresh seeds" in page and "| base |" in page and "(3) |" in page


def test_a_trial_whose_seed_diverges_fails_with_its_reason_in_both_stores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write(tmp_path / "tiny.toml", 'trials = 1\nsampler = "random"\npruner = "none"\n[search.space]\n'
                                          '"optim.lr" = {choices = [1e12]}\n', steps=30)
    result = CliRunner().invoke(app, ["search", str(study), "--workers", "1", "--no-report"])
    assert result.exit_code == 0, result.output  # a failed trial is a result of the search
    trials, runs = recorded(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert_one_to_one(trials, runs)
    assert trials[0].user_attrs["fail_reason"].startswith("Diverged: loss is NaN or infinite at step ")
    assert all(r.data.tags["wb.fail_reason"] == trials[0].user_attrs["fail_reason"] for r in runs)


def test_seeds_advanced_side_by_side_train_exactly_as_one_after_the_other(tmp_path):
    from workbench.evaluate.evaluators import evaluator_for
    from workbench.run.train import training

    configs = [with_overrides(RunConfig(), {"data.name": "moons", "net.mlp.width": 16, "train.steps": 30,
                                            "train.batch_size": 32, "eval.every": 10, "eval.num_samples": 100,
                                            "eval.num_samples_during": 100, "eval.fm_steps": [],
                                            "train.seed": seed}) for seed in (0, 1)]
    alone = [train(c, tmp_path / f"alone{i}", progress=False, evaluator=evaluator_for(c)).metrics
             for i, c in enumerate(configs)]
    runs = [training(c, tmp_path / f"together{i}", progress=False, evaluator=evaluator_for(c))
            for i, c in enumerate(configs)]
    results = [None, None]
    while None in results:
        for i, run in enumerate(runs):
            try:
                next(run)
            except StopIteration as done:
                results[i] = done.value.metrics
    assert results == alone


def test_search_cli_errors_exit_2_and_dry_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = tmp_path / "plain.toml"
    plain.write_text('name = "plain"\nmetric = "energy_1nfe"\nseeds = [0]\n[base]\n"data.name" = "moons"\n'
                     '[[axes]]\nkey = "meanflow.ratio"\nvalues = [0.0]\n')
    result = CliRunner().invoke(app, ["search", str(plain)])
    assert result.exit_code == 2 and "no [search] section" in result.output
    bad = write(tmp_path / "tiny.toml", '[search.space]\n"meanflow.ratio" = {low = 0.0, high = 2.0}\n')
    result = CliRunner().invoke(app, ["search", str(bad)])
    assert result.exit_code == 2 and "search.space.meanflow.ratio: 2.0 is not a value" in result.output
    good = write(tmp_path / "tiny.toml")
    result = CliRunner().invoke(app, ["ablate", str(good)])
    assert result.exit_code == 2 and "no [[axes]] to ablate; it is a search: wb search tiny" in result.output
    result = CliRunner().invoke(app, ["search", str(good), "--dry-run"])
    assert result.exit_code == 0 and "8 trials x 2 seeds" in result.output and "optim.lr: categorical" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.toml", "tiny.toml"]
    result = CliRunner().invoke(app, ["report", "tiny"])
    assert result.exit_code == 2 and "no MLflow store" in result.output


def test_multi_objective_search_keeps_its_pareto_front(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write(tmp_path / "tiny.toml", 'trials = 3\nsampler = "random"\nmetric = ["energy_1nfe", "swd_1nfe"]\n'
                                          '[search.space]\n"meanflow.ratio" = {low = 0.0, high = 1.0}\n', steps=20)
    result = CliRunner().invoke(app, ["search", str(study), "--workers", "1"])
    assert result.exit_code == 0, result.output
    trials, runs = recorded(tmp_path)
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in trials)
    assert all(not math.isnan(v) for t in trials for v in t.values)
    # the front computed here from the trials' values: the trials no other trial beats on both (lower) scores
    front = sorted(t.number for t in trials if not any(
        all(o <= v for o, v in zip(other.values, t.values)) and other.values != t.values for other in trials))
    assert f"Pareto front over energy_1nfe, swd_1nfe: trials {front}." in (tmp_path / "reports/tiny/search.md").read_text()


def test_the_confirmation_runs_the_best_against_the_base_and_the_searchs_compare_settings(tmp_path):
    """search_toy's base is wb config's defaults (the paper's) on the searched keys; its search.compare adds the
    CPU studies' base, so the confirmation runs three settings; without compare, two."""
    import dataclasses

    from workbench.study.derived import confirmation

    study = load_study("search_toy")
    params = {"meanflow.t_dist.mu": 0.7, "meanflow.t_dist.sigma": 1.99, "meanflow.r_dist.mu": -0.1,
              "meanflow.r_dist.sigma": 1.66, "meanflow.ratio": 0.96, "meanflow.adaptive_p": 0.84,
              "meanflow.adaptive_c": 1e-4}
    best = optuna.trial.create_trial(params=params, value=0.0026, distributions={
        k: optuna.distributions.FloatDistribution(-10, 10) for k in params})
    best.number = 8
    raw = confirmation(study, best)
    (axis,) = raw["axes"]
    assert axis["labels"] == ["best (trial 8)", "base", "CPU studies' base"]
    settings = [dict(zip(axis["key"], values)) for values in axis["values"]]
    assert settings[0]["meanflow.t_dist"] == "lognorm(0.70,1.99)" and settings[0]["meanflow.adaptive_c"] == 1e-4
    assert settings[1] == {"meanflow.t_dist": "lognorm(-0.4,1.0)", "meanflow.r_dist": "", "meanflow.ratio": 0.25,
                           "meanflow.adaptive_p": 1.0, "meanflow.adaptive_c": 0.001}
    assert settings[2] == settings[1] | {"meanflow.t_dist": "uniform(0,1)", "meanflow.ratio": 1.0,
                                         "meanflow.adaptive_p": 0.5}
    assert "against the study's base config, CPU studies' base, on fresh seeds [1, 2, 3]" in raw["description"]
    plain = dataclasses.replace(study, search=study.search.model_copy(update={"compare": {}}))
    assert confirmation(plain, best)["axes"][0]["labels"] == ["best (trial 8)", "base"]


@pytest.mark.parametrize(("compare", "message"), [
    ('{"x" = {"optim.lr" = 0.1}}', "compare.x: names keys the search does not search: ['optim.lr']"),
    ('{"x" = {"meanflow.ratio" = 7.0}}', "search.compare.x: meanflow.ratio"),
])
def test_a_bad_compare_setting_exits_2_naming_it(tmp_path, compare, message):
    lines = Path(load_study("search_toy").path).read_text().splitlines()
    text = "\n".join(f"compare = {compare}" if line.startswith("compare = ") else line for line in lines)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["search", str(path), "--dry-run"])
    assert result.exit_code == 2 and message in result.output, result.output
