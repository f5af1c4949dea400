"""The [search] section of a study file: its schema, the checks against the config, and what Optuna suggests."""
from pathlib import Path

import optuna
import pytest

from workbench.study.study import StudyError, parse_study, parse_study_text

BASE = {"name": "s", "metric": "energy_1nfe", "seeds": [0], "base": {"data.name": "moons", "train.steps": 10,
                                                                                   "eval.every": 5}}
SPACE = {"meanflow.ratio": {"low": 0.1, "high": 1.0}, "optim.lr": {"low": 1e-4, "high": 1e-2, "log": True},
         "net.mlp.depth": {"low": 1, "high": 4}, "meanflow.t_dist": {"choices": ["uniform(0,1)", "lognorm(-0.4,1.0)"]}}


def study(**search):
    return parse_study(BASE | {"search": {"space": SPACE} | search}, Path("studies/s.toml"))


def test_a_search_needs_no_axes_and_its_dimensions_get_their_kinds():
    spec = study(trials=7).search
    assert spec.trials == 7 and spec.sampler == "tpe" and spec.prune == "median"
    kinds = {key: p.kind for key, p in spec.space.items()}
    assert kinds == {"meanflow.ratio": "float", "optim.lr": "float", "net.mlp.depth": "int",
                     "meanflow.t_dist": "categorical"}


def test_suggestions_stay_in_their_ranges_and_are_the_trials_params():
    from workbench.study.space import suggest

    spec = study().search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = trials.ask()
        values = suggest(trial, spec)
        assert values == trial.params
        assert 0.1 <= values["meanflow.ratio"] <= 1.0 and 1e-4 <= values["optim.lr"] <= 1e-2
        assert values["net.mlp.depth"] in (1, 2, 3, 4) and values["meanflow.t_dist"] in SPACE["meanflow.t_dist"]["choices"]
        trials.tell(trial, 0.0)
    depths = {t.params["net.mlp.depth"] for t in trials.trials}
    assert depths == {1, 2, 3, 4}  # 30 random draws of 4 values cover all of them (fixed seed)


def test_grid_values_enumerate_choices_and_steps():
    from workbench.study.space import ParamModel, grid_values

    assert grid_values(ParamModel(low=0.0, high=1.0, step=0.25)) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert grid_values(ParamModel(low=2, high=8, step=3, type="int")) == [2, 5, 8]
    assert grid_values(ParamModel(choices=["a", "b"])) == ["a", "b"]


@pytest.mark.parametrize("change, message", [
    ({"space": {"meanflow.ratoi": {"low": 0.1, "high": 0.5}}},
     "search.space.meanflow.ratoi: 0.1 is not a value this key takes (unknown key"),
    ({"space": {"meanflow.ratio": {"low": 0.1, "high": 2.0}}}, "search.space.meanflow.ratio: 2.0 is not a value this key takes"),
    ({"space": {"meanflow.ratio": {"low": 0.5, "high": 0.1}}}, "high: must be above low, got low=0.5, high=0.1"),
    ({"space": {"optim.lr": {"low": 0.0, "high": 0.1, "log": True}}}, "low: a log range needs low > 0"),
    ({"space": {"meanflow.tangent": {"choices": ["(v,0,1)", "(v,2,1)"]}}}, "'(v,2,1)' is not a value this key takes"),
    ({"space": {"train.steps": {"low": 5, "high": 20}}}, "search.space.train.steps: also set in [base]"),
    ({"space": {"meanflow.ratio": {"low": 0.1}}}, "a float dimension needs low and high"),
    ({"space": {"meanflow.ratio": {"low": 0.1, "high": 0.5, "colour": 1}}}, "search.space.meanflow.ratio.colour: unknown key"),
    ({"space": {}}, "search.space: Dictionary should have at least 1 item"),
    ({"sampler": "annealing"}, "search.sampler: Input should be 'tpe', 'gp', 'cmaes', 'random', 'qmc' or 'grid'"),
    ({"pruner": "wait"}, "search.pruner: Input should be"),
    ({"trials": 0}, "search.trials: Input should be greater than or equal to 1 (got 0)"),
    ({"sampler": "grid"}, "search.sampler: grid needs choices or a step on every dimension"),
])
def test_bad_search_sections_name_the_field(change, message):
    with pytest.raises(StudyError) as err:
        study(**change)
    assert str(err.value).startswith("studies/s.toml: ") and message in str(err.value), str(err.value)


def test_the_search_metric_is_checked_like_the_studys():
    text = ('name = "s"\nmetric = "energy_1nfe"\nseeds = [0]\n[base]\n"data.name" = "moons"\n'
            '[search]\nmetric = "fid_1nfe"\npruner = "none"\n[search.space]\n"meanflow.ratio" = {low = 0.1, high = 1.0}\n')
    with pytest.raises(StudyError, match="search.metric: 'fid_1nfe' is not produced"):
        parse_study_text(text, Path("studies/s.toml"))


def test_a_template_fills_a_string_key_from_its_own_dimensions():
    from workbench.study.space import dimensions, suggest

    template = {"template": "lognorm({mu:.2f},{sigma:.2f})",
                "params": {"mu": {"low": -1.0, "high": 0.5}, "sigma": {"low": 0.6, "high": 1.6}}}
    spec = study(space={"meanflow.t_dist": template}).search
    assert list(dimensions(spec)) == ["meanflow.t_dist.mu", "meanflow.t_dist.sigma"]
    assert spec.space["meanflow.t_dist"].extremes() == ["lognorm(-1.00,0.60)", "lognorm(0.50,1.60)"]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    values = suggest(trial, spec)
    assert values == {"meanflow.t_dist": f"lognorm({trial.params['meanflow.t_dist.mu']:.2f},"
                                         f"{trial.params['meanflow.t_dist.sigma']:.2f})"}


@pytest.mark.parametrize("change, message", [
    ({"space": {"meanflow.t_dist": {"template": "lognorm({mu},{sigma})", "params": {"mu": {"low": -1.0, "high": 0.0}}}}},
     "search.space.meanflow.t_dist.template: 'lognorm({mu},{sigma})' does not format with params ['mu']"),
    ({"space": {"meanflow.t_dist": {"template": "lognorm({mu},1.0)", "params": {"mu": {"low": -1.0, "high": 9.0}},
                                    "low": 0.0}}}, "a template dimension has a template and params"),
    ({"space": {"meanflow.t_dist": {"template": "uniform({a},1)", "params": {"a": {"low": -1.0, "high": 0.5}}}}},
     "search.space.meanflow.t_dist: 'uniform(-1.0,1)' is not a value this key takes"),
    ({"metric": ["energy_1nfe", "swd_1nfe"], "pruner": "median"}, "search.pruner: Optuna prunes single-objective"),
    ({"metric": ["energy_1nfe", "swd_1nfe"], "sampler": "cmaes"}, "search.sampler: 'cmaes' is single-objective"),
    ({"metric": ["energy_1nfe", "swd_1nfe"], "direction": ["minimize"]}, "search.direction: one per metric (2)"),
    ({"metric": ["energy_1nfe", "energy_1nfe"]}, "search.metric: a list of distinct metric names"),
    ({"direction": "upwards"}, "search.direction"),
])
def test_bad_templates_objectives_and_pruners_name_the_field(change, message):
    with pytest.raises(StudyError) as err:
        study(**change)
    assert message in str(err.value), str(err.value)


def test_directions_default_to_each_metrics_own_sense_and_a_pruner_needs_evaluations():
    from workbench.study.space import objectives

    spec = study(metric=["energy_1nfe", "precision_1nfe"]).search
    assert objectives(spec, "energy_1nfe") == [("energy_1nfe", "minimize"), ("precision_1nfe", "maximize")]
    assert spec.prune == "none"  # several metrics: Optuna does not prune
    assert objectives(study().search, "energy_1nfe") == [("energy_1nfe", "minimize")]
    raw = BASE | {"base": {"data.name": "moons"}, "search": {"space": SPACE}}
    with pytest.raises(StudyError, match="search.pruner: 'median' prunes on the evaluations every eval.every steps"):
        parse_study(raw, Path("studies/s.toml"))
    parse_study(raw | {"search": {"space": SPACE, "pruner": "none"}}, Path("studies/s.toml"))  # no pruner: fine


def test_the_search_report_flags_a_best_value_on_a_bound_of_its_range():
    """Within 2% of the range's width of a bound (of its log for a log dimension): lr 1.1e-4 of 1e-4 .. 1e-1 (log)
    and batch 505 of 32 .. 512 sit on their lower and upper bounds; a value in the middle, one 2.1% in and a
    categorical choice do not."""
    from workbench.report.search import at_bounds
    from workbench.study.space import SearchModel

    search = SearchModel.model_validate({"space": {
        "optim.lr": {"low": 1e-4, "high": 1e-1, "log": True}, "meanflow.ratio": {"low": 0.0, "high": 1.0},
        "train.batch_size": {"low": 32, "high": 512}, "meanflow.tangent": {"choices": ["(v,0,1)", "(v,0,0)"]}}})
    flagged = at_bounds(search, {"optim.lr": 1.1e-4, "meanflow.ratio": 0.5, "train.batch_size": 505,
                                 "meanflow.tangent": "(v,0,1)"})
    assert flagged == ["`optim.lr` = 0.00011 at its low bound (0.0001 .. 0.1)",
                       "`train.batch_size` = 505 at its high bound (32 .. 512)"]
    assert at_bounds(search, {"optim.lr": 1.2e-4, "meanflow.ratio": 0.021}) == []  # log: 2.6% of 3 decades up
