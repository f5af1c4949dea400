"""Toy distribution metrics: 0 for identical sets, positive otherwise, closed forms, model ranking."""
import math

import pytest
import torch

from workbench.config import RunConfig, with_overrides
from workbench.evaluate import energy_distance, sliced_wasserstein, toy_metrics
from workbench.train import train


def test_identical_sets_score_zero_and_shifted_sets_positive():
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    assert abs(energy_distance(x, x)) < 1e-12
    assert sliced_wasserstein(x, x) == 0.0
    assert energy_distance(x, x + 0.5) > 0.05 and sliced_wasserstein(x, x + 0.5) > 0.1


def test_sliced_wasserstein_of_a_shift_is_the_projected_shift():
    """Shift by s: each 1D W2 is |<s, d>|, so SW2^2 = mean over directions of <s, d>^2 = |s|^2 / D in expectation."""
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    shift = torch.tensor([0.6, -0.8])
    assert math.isclose(sliced_wasserstein(x, x + shift, num_projections=4096), 1 / math.sqrt(2), rel_tol=0.03)


def test_energy_distance_of_point_masses():
    """Two Dirac masses at distance d: 2d - 0 - 0."""
    x, y = torch.zeros(10, 2), torch.full((7, 2), 3.0)
    assert math.isclose(energy_distance(x, y), 2 * math.hypot(3, 3), rel_tol=1e-12)


def test_trained_model_ranks_above_untrained(tmp_path):
    tiny = {"net.mlp.width": 64, "net.mlp.depth": 2, "train.batch_size": 256, "train.device": "cpu",
            "data.name": "checkerboard", "sample.num_points": 100, "optim.lr": 3e-3}
    untrained = train(with_overrides(RunConfig(), {**tiny, "train.steps": 1}), tmp_path / "a", progress=False)
    trained = train(with_overrides(RunConfig(), {**tiny, "train.steps": 400, "train.ema_decay": 0.99}),
                    tmp_path / "b", progress=False)
    before = toy_metrics(untrained.ema, "checkerboard", nfe=(1,), num_samples=1000)
    after = toy_metrics(trained.ema, "checkerboard", nfe=(1,), num_samples=1000)
    assert set(after) == {f"{m}_1nfe" for m in ("energy", "swd", "precision", "tv", "modes", "transport")} | {"uerr"}
    assert after["energy_1nfe"] < 0.5 * before["energy_1nfe"]
    assert after["swd_1nfe"] < 0.5 * before["swd_1nfe"]
    assert after["transport_1nfe"] < 0.5 * before["transport_1nfe"] and after["uerr"] < 0.5 * before["uerr"]
    assert after["precision_1nfe"] > before["precision_1nfe"]


def test_evaluation_during_and_after_training(tmp_path):
    import json

    from workbench.evaluate import evaluator_for, metric_names

    config = with_overrides(RunConfig(), {"net.mlp.width": 16, "net.mlp.depth": 1, "train.batch_size": 32,
                                          "train.steps": 20, "train.log_every": 10, "train.device": "cpu",
                                          "sample.num_points": 50, "eval.every": 10, "eval.num_samples": 300,
                                          "eval.num_samples_during": 100, "eval.nfe": "1,2", "eval.fm_steps": "5"})
    result = train(config, tmp_path / "run", progress=False, evaluator=evaluator_for(config))
    names = {f"{m}_{s}" for m in ("energy", "swd", "precision", "tv", "modes", "transport")
             for s in ("1nfe", "2nfe", "fm5")} | {"uerr"}
    assert set(result.metrics) == names == set(metric_names(config))
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert record["metrics"] == result.metrics and record["num_samples"] == 300 and "points" in record["features"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "energy_1nfe" in r] == [10, 20]  # during (100 samples) and final (300)


def test_wb_eval_rescores_a_saved_run(tmp_path):
    import json

    from typer.testing import CliRunner

    from workbench.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["train", "--data", "gaussians", "--steps", "5", "--run-dir", str(tmp_path / "run"),
                              "--set", "net.mlp.width=16", "--set", "eval.num_samples=200", "--set", "sample.num_points=50"])
    assert out.exit_code == 0, out.output
    trained = json.loads((tmp_path / "run" / "eval.json").read_text())
    again = runner.invoke(app, ["eval", str(tmp_path / "run")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == trained  # same weights, seeds, sizes
    more = runner.invoke(app, ["eval", str(tmp_path / "run"), "--set", "eval.nfe=4", "--set", "eval.fm_steps=()"])
    assert more.exit_code == 0 and "energy_4nfe" in more.output and "fm" not in more.output
    assert runner.invoke(app, ["eval", str(tmp_path / "run"), "--set", "train.steps=3"]).exit_code == 2
    assert runner.invoke(app, ["eval", str(tmp_path)]).exit_code == 2


def test_wb_eval_without_checkpoint_exits_2(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    (tmp_path / "config.json").write_text(with_overrides(RunConfig(), {"data.name": "moons"}).model_dump_json())
    result = CliRunner().invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "no checkpoint" in result.output


def test_support_scores_count_squares_and_modes():
    from workbench.data import GAUSSIAN_MEANS
    from workbench.evaluate import support_scores

    # 6 points in square 0, 2 in square 1, 2 outside: precision 0.8, shares (6/8, 2/8, 0, ...)
    corners = [[-2, -2]] * 6 + [[-2, 0]] * 2
    points = torch.tensor(corners, dtype=torch.float32) + 0.5
    points = torch.cat([points, torch.tensor([[-1.5, 1.5], [3.0, 3.0]])])
    scores = support_scores(points, "checkerboard")
    assert math.isclose(scores["precision"], 0.8)
    assert math.isclose(scores["tv"], 0.5 * (abs(6 / 8 - 1 / 8) + abs(2 / 8 - 1 / 8) + 6 / 8))
    assert scores["modes"] == 2  # a square counts once it holds a quarter of its share, 10 / 8 / 4 points
    # Gaussians: a point at its own mode, one at another class's mode, one 0.31 away (beyond 3 std)
    labels = torch.tensor([0, 1, 2])
    off_mode = GAUSSIAN_MEANS[2] + torch.tensor([0.31, 0.0], dtype=torch.float64)
    points = torch.stack([GAUSSIAN_MEANS[0], GAUSSIAN_MEANS[3], off_mode])
    scores = support_scores(points.float(), "gaussians", labels)
    assert math.isclose(scores["precision"], 2 / 3) and math.isclose(scores["labelprec"], 1 / 3)


def test_the_evaluator_of_a_run_scores_the_sample_count_it_is_given():
    from workbench.evaluate import evaluator_for

    from conftest import small_net

    config = with_overrides(RunConfig(), {"data.name": "gaussians", "eval.nfe": [1], "eval.fm_steps": [], "eval.seed": 2})
    net = small_net(num_classes=8, dtype=torch.float32)
    scores = evaluator_for(config)(net, 300)
    guidance = config.meanflow.cfg_omega / (1 - config.meanflow.cfg_kappa)
    assert scores == toy_metrics(net, "gaussians", (1,), (), 300, 2, guidance, (0.0, 1.0))
    assert scores != evaluator_for(config)(net, 200)


def test_reference_samplers_bracket_a_learned_model():
    """The exact map scores at the data's floor, the uniform box and the prior far from it."""
    from workbench.evaluate import toy_references

    # energy distance needs the points: at 500, data vs data scores above the uniform box
    refs = toy_references("checkerboard", 2000, 0, True)
    assert refs["exact map"]["precision"] == 1.0 and refs["data"]["precision"] == 1.0
    assert refs["exact map"]["transport"] == 0.0 and refs["exact map"]["uerr"] == 0.0
    assert 0.4 < refs["uniform box"]["precision"] < 0.6  # half the box is black squares
    assert refs["exact map"]["energy"] < 0.3 * refs["uniform box"]["energy"]
    assert refs["prior (u = 0)"]["transport"] > 0.1 and refs["prior (u = 0)"]["uerr"] > 0.5


@pytest.mark.parametrize("conditional", [True, False])
def test_reference_samplers_of_the_labelled_gaussians_are_their_points_scored(conditional):
    """Each reference sampler's scores are point_scores of its own points (labels where it has them, transport
    only for images of the evaluation noise), the seed drawing the uniform box; 'class means' only with labels."""
    from workbench.data import GAUSSIAN_MEANS, index_noise, load_data
    from workbench.evaluate import exact_targets, point_scores, toy_references

    n, seed = 400, 3
    refs = toy_references("gaussians", n, seed, conditional)
    reference, train = load_data("gaussians", "test").x[:n], load_data("gaussians", "train", labels=conditional)
    labels = torch.arange(n) % 8 if conditional else None
    exact = exact_targets("gaussians", n, seed, conditional=conditional)
    low, high = train.x.min(0).values, train.x.max(0).values
    points = {"data": (train.x[:n], None if labels is None else train.labels[:n]), "exact map": (exact["map"], labels),
              "uniform box": (low + (high - low) * torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)), None),
              "prior (u = 0)": (index_noise(seed, range(n), (2,)), None)}
    if conditional:
        points["class means"] = (GAUSSIAN_MEANS[labels].float(), labels)
    assert list(refs) == list(points)
    for name, (x, x_labels) in points.items():
        expected = point_scores(x, reference, "gaussians", x_labels, exact["map"], seed)
        if name in ("data", "uniform box"):
            del expected["transport"]
        if name == "prior (u = 0)":
            expected["uerr"] = float(exact["u"].pow(2).sum(1).mean())
        if name == "exact map":
            expected["uerr"] = 0.0
        assert refs[name] == pytest.approx(expected, rel=1e-12), name
    if conditional:
        assert refs["class means"]["labelprec"] == 1.0 and refs["data"]["labelprec"] > 0.99
    assert toy_references("gaussians", n, seed + 1, conditional)["uniform box"] != refs["uniform box"]


def test_study_metric_must_be_an_evaluated_lower_is_better_name(tmp_path):
    import pytest

    from workbench.studies import StudyError, load_study

    text = ('name = "s"\nmetric = "{}"\nseeds = [0]\n[base]\n"data.name" = "{}"\n'
            '[[axes]]\nkey = "meanflow.ratio"\nvalues = [0.0]\n')
    path = tmp_path / "s.toml"
    path.write_text(text.format("transport_1nfe", "checkerboard"))
    assert load_study(path).metric == "transport_1nfe"
    path.write_text(text.format("transport_1nfe", "moons"))  # no exact reference for moons
    with pytest.raises(StudyError, match=r"metric: 'transport_1nfe' is not produced .*energy_1nfe"):
        load_study(path)
    path.write_text(text.format("fid_1nfe", "checkerboard"))
    with pytest.raises(StudyError, match="not produced"):
        load_study(path)
    path.write_text(text.format("precision_1nfe", "checkerboard"))
    with pytest.raises(StudyError, match="higher-is-better"):
        load_study(path)


def test_unconditional_model_of_a_labelled_set(tmp_path):
    """data.labels=false: no label embedding, no labelprec, and the exact map the metrics compare with is
    the unconditional one (its samples cover all 8 modes from any noise)."""
    from workbench.evaluate import evaluator_for, exact_targets, metric_names

    config = with_overrides(RunConfig(), {"data.name": "gaussians", "data.labels": False, "net.mlp.width": 16,
                                          "net.mlp.depth": 1, "train.batch_size": 32, "train.steps": 5,
                                          "train.device": "cpu", "sample.num_points": 50, "eval.num_samples": 200,
                                          "eval.fm_steps": ""})
    result = train(config, tmp_path / "run", progress=False, evaluator=evaluator_for(config))
    assert result.ema.num_classes == 0
    assert set(result.metrics) == set(metric_names(config)) and "labelprec_1nfe" not in result.metrics
    unconditional = exact_targets("gaussians", 200, 0, conditional=False)
    conditional = exact_targets("gaussians", 200, 0)
    assert unconditional["labels"] is None and conditional["labels"] is not None
    assert not torch.allclose(unconditional["map"], conditional["map"])


@pytest.mark.parametrize(("overrides", "families", "extra"), [
    ({"data.name": "gaussians"}, ["energy", "swd", "precision", "tv", "modes", "transport", "labelprec"], ["uerr"]),
    ({"data.name": "gaussians", "data.labels": False}, ["energy", "swd", "precision", "tv", "modes", "transport"], ["uerr"]),
    ({"data.name": "moons"}, ["energy", "swd"], []),
    ({"data.name": "digits"}, ["fid", "kid"], []),
    ({"data.name": "digits", "eval.features": "inception"}, ["fid"], []),
    ({"data.name": "latents"}, ["fdlatent"], []),
    ({"data.name": "latents", "eval.features": "inception"}, ["fid"], []),
])
def test_metric_names_by_data_and_features(overrides, families, extra):
    from workbench.evaluate import metric_names

    config = with_overrides(RunConfig(), {**overrides, "eval.nfe": [1, 2], "eval.fm_steps": [4]})
    names = [f"{f}_{s}" for s in ("1nfe", "2nfe", "fm4") for f in families] + extra
    assert metric_names(config) == names
    more = with_overrides(config, {"train.ema_decays": [0.9, 0.99995], "eval.raw": True})
    assert metric_names(more) == names + [f"{n}_{s}" for s in ("ema0.9", "ema0.99995", "raw") for n in names]
