"""Toy distribution metrics: 0 for identical sets, positive otherwise, closed forms, model ranking."""
import math

import numpy as np
import pytest
import torch

from workbench.config import RunConfig, with_overrides
from workbench.evaluate.toy import energy_distance, sliced_wasserstein, toy_metrics
from workbench.run.train import train


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
    # the recorded swd scores: 256 directions drawn from the evaluation seed (0 unless given)
    y = x.flip(1) + shift
    assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y, 256, 0) != sliced_wasserstein(x, y, 255, 0)
    assert sliced_wasserstein(x, y, seed=3) == sliced_wasserstein(x, y, 256, 3) != sliced_wasserstein(x, y, seed=0)
    with pytest.raises(ValueError) as error:
        sliced_wasserstein(x, x[:10])
    assert str(error.value) == "sliced_wasserstein needs equal-size sets, got (2000, 2) and (10, 2)"


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
    before = toy_metrics(untrained.ema, "checkerboard", (1,), (), 1000, 0, 1.0, (0.0, 1.0))
    after = toy_metrics(trained.ema, "checkerboard", (1,), (), 1000, 0, 1.0, (0.0, 1.0))
    exact = {f"{m}_exact" for m in ("energy", "swd", "precision", "tv", "modes")}
    assert set(after) == {f"{m}_1nfe" for m in ("energy", "swd", "precision", "tv", "modes", "transport", "spread")} \
        | exact | {"uerr"}
    assert {k: after[k] for k in exact} == {k: before[k] for k in exact}  # the target's scores, not the model's
    assert after["energy_1nfe"] < 0.5 * before["energy_1nfe"]
    assert after["swd_1nfe"] < 0.5 * before["swd_1nfe"]
    assert after["transport_1nfe"] < 0.5 * before["transport_1nfe"] and after["uerr"] < 0.5 * before["uerr"]
    assert after["precision_1nfe"] > before["precision_1nfe"]


def test_evaluation_during_and_after_training(tmp_path):
    import json

    from workbench.evaluate.evaluators import evaluator_for
    from workbench.evaluate.names import metric_names

    config = with_overrides(RunConfig(), {"net.mlp.width": 16, "net.mlp.depth": 1, "train.batch_size": 32,
                                          "train.steps": 20, "train.log_every": 10, "train.device": "cpu",
                                          "sample.num_points": 50, "eval.every": 10, "eval.num_samples": 300,
                                          "eval.num_samples_during": 100, "eval.nfe": "1,2", "eval.fm_steps": "5"})
    result = train(config, tmp_path / "run", progress=False, evaluator=evaluator_for(config))
    names = {f"{m}_{s}" for m in ("energy", "swd", "precision", "tv", "modes", "transport", "spread")
             for s in ("1nfe", "2nfe", "fm5")} | {f"{m}_exact" for m in ("energy", "swd", "precision", "tv", "modes")} \
        | {"uerr", "uerrown"}
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
    from workbench.evaluate.toy import support_scores

    # 6 points in square 0, 2 in square 1, 2 outside: precision 0.8, shares (6/8, 2/8, 0, ...)
    corners = [[-2, -2]] * 6 + [[-2, 0]] * 2
    points = torch.tensor(corners, dtype=torch.float32) + 0.5
    points = torch.cat([points, torch.tensor([[-1.5, 1.5], [3.0, 3.0]])])
    scores = support_scores(points, "checkerboard")
    assert math.isclose(scores["precision"], 0.8)
    assert math.isclose(scores["tv"], 0.5 * (abs(6 / 8 - 1 / 8) + abs(2 / 8 - 1 / 8) + 6 / 8))
    assert scores["modes"] == 2  # a square counts once it holds a quarter of its share, 10 / 8 / 4 points
    # 64 points: 2 in one square (exactly a quarter of its share, 64 / 8 / 4: counted), 1 in another (not),
    # 9 in a third, 52 off the board; then one point on the board; then none
    on_board = [[-2, -2]] * 2 + [[-2, 0]] + [[0, 0]] * 9
    points = torch.cat([torch.tensor(on_board, dtype=torch.float32) + 0.5, torch.full((52, 2), 3.0)])
    scores = support_scores(points, "checkerboard")
    assert scores["modes"] == 2 and math.isclose(scores["precision"], 12 / 64)
    assert math.isclose(scores["tv"], 0.5 * (abs(2 / 12 - 1 / 8) + abs(1 / 12 - 1 / 8) + abs(9 / 12 - 1 / 8) + 5 / 8))
    assert support_scores(points[2:3], "checkerboard") == {"precision": 1.0, "tv": 0.875, "modes": 1.0}
    assert support_scores(points[-3:], "checkerboard") == {"precision": 0.0, "tv": 1.0, "modes": 0.0}
    # Gaussians: a point at its own mode, one at another class's mode, one 0.31 away (beyond 3 std)
    labels = torch.tensor([0, 1, 2])
    off_mode = GAUSSIAN_MEANS[2] + torch.tensor([0.31, 0.0], dtype=torch.float64)
    points = torch.stack([GAUSSIAN_MEANS[0], GAUSSIAN_MEANS[3], off_mode])
    scores = support_scores(points.float(), "gaussians", labels)
    assert math.isclose(scores["precision"], 2 / 3) and math.isclose(scores["labelprec"], 1 / 3)


def test_the_evaluator_of_a_run_scores_the_sample_count_it_is_given():
    from workbench.evaluate.evaluators import evaluator_for

    from conftest import small_net

    config = with_overrides(RunConfig(), {"data.name": "gaussians", "eval.nfe": [1], "eval.fm_steps": [], "eval.seed": 2})
    net = small_net(num_classes=8, dtype=torch.float32)
    scores = evaluator_for(config)(net, 300)
    guidance = config.meanflow.cfg_omega / (1 - config.meanflow.cfg_kappa)
    sampler = tuple((key, getattr(config.meanflow, key)) for key in ("t_dist", "r_dist", "ratio", "ratio_mask", "tr_sampler"))
    assert scores == toy_metrics(net, "gaussians", (1,), (), 300, 2, guidance, (0.0, 1.0), sampler)
    assert scores != evaluator_for(config)(net, 200)


def test_reference_samplers_bracket_a_learned_model():
    """The exact map scores at the data's floor, the uniform box and the prior far from it."""
    from workbench.evaluate.toy import toy_references

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
    from workbench.evaluate.toy import exact_targets, point_scores, toy_references

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
        expected = point_scores(x, reference, "gaussians", x_labels, exact["map"], seed, labels)
        if name in ("data", "uniform box"):
            del expected["transport"]
        if name == "uniform box":
            del expected["spread"]
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

    from workbench.study.study import StudyError, load_study

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
    from workbench.evaluate.evaluators import evaluator_for
    from workbench.evaluate.names import metric_names
    from workbench.evaluate.toy import exact_targets

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
    ({"data.name": "gaussians"}, ["energy", "swd", "precision", "tv", "modes", "transport", "spread", "labelprec"],
     [f"{f}_exact" for f in ("energy", "swd", "precision", "tv", "modes", "labelprec")] + ["uerr", "uerrown"]),
    ({"data.name": "gaussians", "data.labels": False}, ["energy", "swd", "precision", "tv", "modes", "transport", "spread"],
     [f"{f}_exact" for f in ("energy", "swd", "precision", "tv", "modes")] + ["uerr", "uerrown"]),
    ({"data.name": "moons"}, ["energy", "swd"], []),
    ({"data.name": "digits"}, ["fid", "kid"], []),
    ({"data.name": "digits", "eval.features": "inception"}, ["fid"], []),
    ({"data.name": "latents"}, ["fdlatent"], []),
    ({"data.name": "latents", "eval.features": "inception"}, ["fid"], []),
])
def test_metric_names_by_data_and_features(overrides, families, extra):
    from workbench.evaluate.names import metric_names

    config = with_overrides(RunConfig(), {**overrides, "eval.nfe": [1, 2], "eval.fm_steps": [4]})
    names = [f"{f}_{s}" for s in ("1nfe", "2nfe", "fm4") for f in families] + extra
    assert metric_names(config) == names
    more = with_overrides(config, {"train.ema_decays": [0.9, 0.99995], "eval.raw": True})
    assert metric_names(more) == names + [f"{n}_{s}" for s in ("ema0.9", "ema0.99995", "raw") for n in names]


class Calls:
    """Stands in for a metric function: records each call's arguments and returns {'called': n}."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return {"called": len(self.calls)}


def test_evaluator_for_each_data_kind_passes_the_runs_settings(monkeypatch, tmp_path):
    """Toy sets with and without an exact flow, latents, images with the classifier and with Inception, latents
    decoded to images: each evaluator calls its metric with the run's samplers, seed, quantisation, guidance and
    reference, and says what it measures with."""
    from test_latents import latents_file

    from workbench.data import load_data
    from workbench.evaluate import evaluators as evaluate
    from workbench.evaluate import vae

    for name in ("toy_metrics", "latent_metrics", "image_metrics"):
        monkeypatch.setattr(evaluate, name, Calls())
    scorers = []
    monkeypatch.setattr(evaluate, "image_scorer", lambda *args, **kwargs: scorers.append((args, kwargs)) or
                        type("Scorer", (), {"name": "stand-in", "info": {"accuracy": 0.5}})())
    net = torch.nn.Linear(1, 1)
    ev = {"eval.seed": 3, "eval.nfe": [1, 4], "eval.fm_steps": [2], "eval.quantize": "floor",
          "eval.cache_dir": str(tmp_path / "cache")}
    points = "points (energy distance, sliced W2 vs held-out split"

    guided = with_overrides(RunConfig(), {**ev, "data.name": "gaussians", "meanflow.cfg_omega": 2.0,
                                          "meanflow.cfg_kappa": 0.5, "meanflow.cfg_t_lo": 0.1, "meanflow.cfg_t_hi": 0.8})
    evaluator = evaluate.evaluator_for(guided)
    assert evaluator.info == {"features": points + " and the exact flow map (transport, spread, uerr, support scores))",
                              "seed": 3, "exact_guidance": 4.0}
    assert evaluator(net, 300) == {"called": 1}
    sampler = (("t_dist", "lognorm(-0.4,1.0)"), ("r_dist", ""), ("ratio", 0.25), ("ratio_mask", "random"),
               ("tr_sampler", "v0"))
    assert evaluate.toy_metrics.calls[-1] == ((net, "gaussians", (1, 4), (2,), 300, 3, 4.0, (0.1, 0.8), sampler), {})
    evaluator = evaluate.evaluator_for(with_overrides(RunConfig(), {**ev, "data.name": "moons"}))
    assert evaluator.info == {"features": points + ")", "seed": 3}
    evaluator(net, 200)
    assert evaluate.toy_metrics.calls[-1] == ((net, "moons", (1, 4), (2,), 200, 3, 1.0, (0.0, 1.0), sampler), {})

    path = latents_file(tmp_path)
    latent = with_overrides(RunConfig(), {**ev, "data.name": "latents", "data.path": str(path)})
    evaluator = evaluate.evaluator_for(latent)
    assert evaluator.info == {"features": "latent (Frechet distance of flattened latents vs the training latents)",
                              "seed": 3}
    evaluator(net, 100)
    (called_net, (mu, sigma), shape, *rest), _ = evaluate.latent_metrics.calls[-1]
    latent_set = load_data("latents", "test", path=str(path))
    expected_mu, expected_sigma = evaluate.flat_statistics(evaluate.posterior_samples(latent_set, 3))
    assert called_net is net and shape == (4, 8, 8) and rest == [(1, 4), (2,), 100, 3]
    assert np.array_equal(mu, expected_mu) and np.array_equal(sigma, expected_sigma)

    for features, kind in (("auto", "classifier"), ("inception", "inception")):
        digits = with_overrides(RunConfig(), {**ev, "data.name": "digits", "eval.features": features,
                                              "eval.inception_mode": "legacy_tensorflow", "eval.fid_reference": "ref.npz"})
        evaluator = evaluate.evaluator_for(digits)
        assert scorers[-1] == ((digits.data, kind, tmp_path / "cache", 3, "legacy_tensorflow"), {"reference": "ref.npz"})
        assert evaluator.info == {"features": "stand-in", "seed": 3, "accuracy": 0.5}
        evaluator(net, 50)
        (called_net, scorer, shape, *rest), kwargs = evaluate.image_metrics.calls[-1]
        assert called_net is net and scorer.name == "stand-in" and shape == (1, 8, 8)
        assert rest == [(1, 4), (2,), 50, 3, "floor"] and kwargs == {}

    np.savez(tmp_path / "grey.npz", images=np.zeros((6, 8, 8), dtype=np.uint8))  # no labels: auto is Inception
    evaluate.evaluator_for(with_overrides(RunConfig(), {**ev, "data.name": "npz", "data.path": str(tmp_path / "grey.npz")}))
    assert scorers[-1][0][1] == "inception"
    loads, load_data = [], evaluate.load_data
    monkeypatch.setattr(evaluate, "load_data", lambda *args, **kwargs: loads.append((args, kwargs)) or load_data(*args, **kwargs))
    evaluate.evaluator_for(with_overrides(digits, {"data.data_dir": str(tmp_path / "sets")}))
    assert loads == [(("digits", "test"), {"path": "", "data_dir": str(tmp_path / "sets")})]

    decoded = []
    monkeypatch.setattr(vae, "load_vae", lambda p: f"vae from {p}")
    monkeypatch.setattr(vae, "decode", lambda *args: decoded.append(args) or "images")
    pixels = with_overrides(latent, {"eval.features": "inception", "eval.vae_path": "sd-vae", "eval.fid_reference": "adm.npz"})
    evaluator = evaluate.evaluator_for(pixels)
    assert scorers[-1] == ((pixels.data, "inception", tmp_path / "cache", 3, "clean"), {"reference": "adm.npz"})
    assert evaluator.info == {"features": "stand-in of images decoded by sd-vae", "reference": "adm.npz", "seed": 3}
    evaluator(net, 20)
    (called_net, scorer, shape, *rest), kwargs = evaluate.image_metrics.calls[-1]
    assert called_net is net and shape == (4, 8, 8) and rest == [(1, 4), (2,), 20, 3, "floor"]
    assert kwargs["decode"]("z") == "images" and decoded == [("vae from sd-vae", "z", latent_set.scale)]


class ExactModel(torch.nn.Module):
    """u_theta = the exact average velocity u*(z, r, t) of the labelled Gaussians (with guidance w on [t_lo, t_hi])."""

    def __init__(self, num_classes: int, guidance: float, interval: tuple[float, float]):
        super().__init__()
        from workbench.data import exact_flow

        self.num_classes, self.flow = num_classes, exact_flow("gaussians", guidance, interval)
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # the evaluation finds the device from a parameter

    def forward(self, z, t, r, labels=None):
        return self.flow.average_velocity(z.double(), t.double(), r.double(), labels).float()


@pytest.mark.parametrize("classes", [8, 0])
def test_the_exact_model_scores_zero_transport_and_zero_u_error(classes):
    """The exact u* as the network: its 1- and 2-step samples are the exact map of the evaluation noise (transport
    ~0, float32 rounding), its u on the pairs is the exact one (uerr ~0), and each sample lands on its class's
    mode; the evaluation must hand the network and the exact reference the same labels, guidance and interval."""
    from workbench.data import load_data
    from workbench.evaluate.draw import generate
    from workbench.evaluate.toy import sliced_wasserstein

    net = ExactModel(classes, guidance=2.0, interval=(0.2, 0.9))
    metrics = toy_metrics(net, "gaussians", (1, 2), (2,), 200, 5, 2.0, (0.2, 0.9))
    assert metrics["transport_1nfe"] < 1e-10 and metrics["uerr"] < 1e-10
    # two RK4 solves against one: the guided field jumps at t = 0.2 and 0.9, which costs RK4 its order there
    assert metrics["transport_2nfe"] < (1e-5 if classes else 1e-10)
    assert metrics["transport_fm2"] > 0.1  # Euler on the instantaneous v: two steps are far from the map
    assert metrics["modes_1nfe"] == 8.0
    if classes:
        assert metrics["labelprec_1nfe"] >= 0.97
    else:
        assert "labelprec_1nfe" not in metrics
    samples = generate(net, (2,), (1,), (), 200, 5)["1nfe"]
    assert metrics["swd_1nfe"] == sliced_wasserstein(samples, load_data("gaussians", "test").x[:200], seed=5)



class Zero(torch.nn.Module):
    num_classes = 0

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, t, r, labels=None):
        return torch.zeros_like(z)


def test_u_error_of_the_zero_model_is_the_mean_squared_exact_u_and_sets_without_a_flow_have_none():
    from workbench.evaluate.toy import exact_targets

    metrics = toy_metrics(Zero(), "checkerboard", (1,), (), 300, 4, 1.0, (0.0, 1.0))
    expected = float(exact_targets("checkerboard", 300, 4, 1.0, (0.0, 1.0), False)["u"].pow(2).sum(1).mean())
    assert math.isclose(metrics["uerr"], expected, rel_tol=1e-12)
    moons = toy_metrics(Zero(), "moons", (1,), (), 300, 4, 1.0, (0.0, 1.0))
    assert set(moons) == {"energy_1nfe", "swd_1nfe"}
