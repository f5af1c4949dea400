"""Training: exact resume, learning-rate schedule, run folder contents."""
import json
import math

import pytest
import torch

from workbench.config import ConfigError, RunConfig, with_overrides
from workbench.data import load_data
from workbench.evaluate.names import metric_names
from workbench.evaluate.pictures import save_run_pictures
from workbench.run.model import build_net, learning_rate
from workbench.run.trackers import JsonlTracker
from workbench.run.train import train

TINY = {"net.mlp.width": 16, "net.mlp.depth": 1, "train.batch_size": 32, "train.steps": 20, "train.log_every": 5,
        "train.checkpoint_every": 10, "sample.num_points": 50, "train.device": "cpu"}


class Interrupt(Exception):
    pass


class InterruptingTracker(JsonlTracker):
    """Stops training right after logging step `at` (as a killed process would)."""

    def __init__(self, path, at):
        super().__init__(path)
        self.at = at

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if step == self.at:
            raise Interrupt


@pytest.mark.parametrize("extra", [{}, {"data.name": "gaussians", "meanflow.cfg_omega": 2.0},
                                   {"train.ema_decays": "0.9,0.5", "train.ema_every": 4, "eval.raw": True}])
def test_resume_continues_exactly(tmp_path, extra):
    config = with_overrides(RunConfig(), {**TINY, **extra, "optim.decay": "cosine", "optim.warmup_steps": 4})
    straight = train(config, tmp_path / "straight", progress=False)
    with pytest.raises(Interrupt):
        train(config, tmp_path / "resumed", tracker=InterruptingTracker(tmp_path / "resumed" / "metrics.jsonl", 15),
              progress=False)
    resumed = train(config, tmp_path / "resumed", resume=True, progress=False)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert straight.extra_emas.keys() == resumed.extra_emas.keys() == ({"ema0.9", "ema0.5"} if extra.get("eval.raw") else set())
    for name, ema in straight.extra_emas.items():  # checkpoint at step 10, mid-way between EMA updates 8 and 12
        assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), resumed.extra_emas[name].state_dict().values()))
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["net"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["net"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]  # rows after the checkpoint (step 15) were dropped and redone once


def test_every_ema_rate_is_the_average_of_the_weights_at_its_update_steps(tmp_path):
    """ema_every = 4 over 12 steps: updates after steps 4, 8, 12, the first a copy, then rate^4 each; the checkpoint
    keeps every rate; load_ema gives each one and the raw weights; a resume with other rates is refused."""
    config = with_overrides(RunConfig(), {**TINY, "train.steps": 12, "train.checkpoint_every": 4, "train.ema_decay": 0.9,
                                          "train.ema_decays": "0.5", "train.ema_every": 4})
    snapshots = []
    for steps in (4, 8, 12):
        run = tmp_path / f"to{steps}"
        train(with_overrides(config, {"train.steps": steps}), run, progress=False)
        snapshots.append(torch.load(run / "checkpoint.pt", weights_only=False)["net"])
    from workbench.run.checkpoint import load_ema

    for rate, which in ((0.9, ""), (0.5, "ema0.5")):
        expected = {k: v.double() for k, v in snapshots[0].items()}
        for snapshot in snapshots[1:]:
            d = rate ** 4
            expected = {k: d * expected[k] + (1 - d) * snapshot[k].double() for k in expected}
        got = load_ema(tmp_path / "to12", config, which).state_dict()
        assert all(torch.allclose(got[k].double(), expected[k], rtol=0, atol=1e-6) for k in expected)
    raw = load_ema(tmp_path / "to12", config, "raw").state_dict()
    assert all(torch.equal(raw[k], snapshots[-1][k]) for k in raw)
    with pytest.raises(ConfigError, match="keeps the EMAs"):
        load_ema(tmp_path / "to12", config, "ema0.99")
    with pytest.raises(ConfigError, match="ema_decays must not change"):
        train(with_overrides(config, {"train.steps": 16, "train.ema_decays": "0.6"}), tmp_path / "to12", resume=True,
              progress=False)


def test_run_folder_contents(tmp_path):
    config = with_overrides(RunConfig(), TINY)
    result = train(config, tmp_path / "run", progress=False)
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"config.json", "checkpoint.pt", "metrics.jsonl"}
    assert save_run_pictures(result.ema, result.data, config, tmp_path / "run") == [tmp_path / "run" / "samples.png"]
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0
    assert RunConfig.model_validate_json((tmp_path / "run" / "config.json").read_text()) == config
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert {"loss", "mse", "weight_mean", "frac_r_neq_t", "lr", "steps_per_s"} <= set(rows[0])
    assert result.steps_per_s > 0


def test_learning_rate_warmup_and_cosine():
    config = with_overrides(RunConfig(), {"optim.lr": 1.0, "optim.warmup_steps": 10, "optim.decay": "cosine",
                                          "train.steps": 110})
    assert learning_rate(0, config) == pytest.approx(0.1)
    assert learning_rate(9, config) == pytest.approx(1.0)
    assert learning_rate(60, config) == pytest.approx(0.5)
    assert learning_rate(110, config) == pytest.approx(0.0)


def test_image_network_on_points_is_a_config_error():
    config = with_overrides(RunConfig(), {"net.arch": "unet"})
    with pytest.raises(ConfigError, match="net.arch='unet' needs images or latents"):
        build_net(config, load_data("checkerboard"))


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_image_training_on_digits_runs(tmp_path, arch):
    config = with_overrides(RunConfig(), {**TINY, "data.name": "digits", "net.arch": arch, "train.steps": 4,
                                          "sample.num_images": 16, "net.unet.channels": 8, "net.dit.hidden": 16,
                                          "net.dit.depth": 1})
    result = train(config, tmp_path / arch, progress=False)
    save_run_pictures(result.ema, result.data, config, tmp_path / arch)
    assert (tmp_path / arch / "samples.png").stat().st_size > 0
    assert math.isfinite(result.final_loss)


def test_bf16_autocast_keeps_the_jvp_in_fp32(tmp_path):
    """Under bf16 autocast (train.precision = bf16) u is bf16, but d/dt u is the fp32 JVP: it equals an fp32
    torch.func.jvp to fp32 rounding, far closer than a bf16 JVP would come."""
    from workbench.meanflow import JVP_MODES
    from workbench.meanflow.dudt import TANGENTS

    torch.manual_seed(0)
    net = build_net(with_overrides(RunConfig(), {"net.arch": "unet", "net.unet.channels": 8}), load_data("digits"))
    z, v = torch.randn(16, 1, 8, 8), torch.randn(16, 1, 8, 8)
    t = torch.rand(16)
    r = t * torch.rand(16)
    _, expected = torch.func.jvp(lambda z_, r_, t_: net(z_, t_, r_), (z, r, t), (v, torch.zeros(16), torch.ones(16)))
    for mode in ("auto", "subset", "whole"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            u, dudt = JVP_MODES[mode](net, z, t, r, v, None, TANGENTS["(v,0,1)"])
        assert dudt.dtype == torch.float32, mode
        torch.testing.assert_close(dudt, expected.detach(), rtol=1e-4, atol=1e-5 * float(expected.detach().abs().max()))
    assert u.dtype == torch.float32 or u.dtype == torch.bfloat16
    config = with_overrides(RunConfig(), {**TINY, "train.precision": "bf16", "train.steps": 5})
    result = train(config, tmp_path / "bf16", progress=False)
    assert math.isfinite(result.final_loss)
    assert all(p.dtype == torch.float32 for p in result.ema.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["unet", "songunet", "dit"])
def test_training_on_gpu(tmp_path, arch):
    config = with_overrides(RunConfig(), {**TINY, "data.name": "digits", "net.arch": arch, "train.device": "cuda",
                                          "train.precision": "bf16", "sample.num_images": 16, "net.songunet.channels": 16,
                                          "net.songunet.channel_mult": "1,2", "net.songunet.attn_resolutions": "4",
                                          "data.augment_p": 0.12 if arch == "songunet" else 0.0,
                                          "train.ema_decays": "0.5", "train.ema_every": 2})
    result = train(config, tmp_path / arch, progress=False)
    assert math.isfinite(result.final_loss) and set(result.extra_emas) == {"ema0.5"}


def test_gradient_clipping_bounds_the_gradient_the_optimizer_steps_with(tmp_path, monkeypatch):
    """optim.grad_clip: every optimizer step sees a global gradient norm of at most the clip (checked inside
    Adam.step); the logged grad_norm is the norm before clipping, here above it."""
    seen = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    config = with_overrides(RunConfig(), {**TINY, "optim.grad_clip": 1e-3, "train.steps": 5})
    train(config, tmp_path / "clip", progress=False)
    assert len(seen) == 5 and max(seen) <= 1e-3 * (1 + 1e-5)
    rows = [json.loads(line) for line in (tmp_path / "clip" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["grad_norm"] > 1e-3  # the pre-clip norm is logged


def test_on_eval_sees_every_intermediate_evaluation_and_can_stop_the_run(tmp_path):
    from workbench.evaluate.evaluators import evaluator_for

    config = with_overrides(RunConfig(), {**TINY, "eval.every": 5, "eval.num_samples": 100, "eval.num_samples_during": 50,
                                          "eval.fm_steps": ""})
    seen = []
    train(config, tmp_path / "all", progress=False, evaluator=evaluator_for(config),
          on_eval=lambda step, scores: seen.append((step, sorted(scores) == sorted(metric_names(config)))))
    assert seen == [(5, True), (10, True), (15, True)]  # not at the last step: that is the final evaluation

    class Stop(Exception):
        pass

    def stop_at_10(step, scores):
        if step == 10:
            raise Stop
    with pytest.raises(Stop):
        train(config, tmp_path / "stopped", progress=False, evaluator=evaluator_for(config), on_eval=stop_at_10)
    rows = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 10 and not (tmp_path / "stopped" / "eval.json").exists()


def test_a_diverging_run_stops_naming_the_step_and_keeps_its_last_finite_checkpoint(tmp_path, monkeypatch):
    import workbench.run.train as training_module
    from workbench.run.train import Diverged

    real, calls = training_module.OBJECTIVES["meanflow"], []

    def loss_turning_nan_at_step_13(*args, **kwargs):  # the fault: step 13's loss is NaN
        loss, metrics = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 13 else loss), metrics

    monkeypatch.setitem(training_module.OBJECTIVES, "meanflow", loss_turning_nan_at_step_13)
    config = with_overrides(RunConfig(), {"data.name": "moons", "net.mlp.width": 16, "train.steps": 200,
                                          "train.batch_size": 32, "train.log_every": 5, "train.checkpoint_every": 5})
    with pytest.raises(Diverged) as err:
        train(config, tmp_path / "run", progress=False)
    assert (err.value.step, err.value.quantity) == (13, "loss")
    assert str(err.value) == "loss is NaN or infinite at step 13"
    assert len(calls) == 15  # stopped at the next logged row (step 15), not trained to the end
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [5, 10]  # no row averaged over a non-finite loss
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 10 and all(torch.isfinite(v).all() for v in saved["net"].values())


def test_compiled_training_equals_eager_within_rounding(tmp_path):
    """train.compile: the whole-batch torch.func.jvp loss through torch.compile (inductor, on the CPU here) trains
    the same model as the eager default (the tangent pass) to float rounding: the official CIFAR-10 network at
    reduced width (GroupNorm, attention, FIR resampling) with its augmentation labels; dropout off, since the two
    paths draw their masks differently. About 40 s on 2 cores, most of it compiling."""
    base = {**TINY, "data.name": "digits", "net.arch": "songunet", "net.songunet.channels": 8,
            "net.songunet.channel_mult": "1,2", "net.songunet.blocks": 1, "net.songunet.attn_resolutions": "4",
            "net.songunet.dropout": 0.0, "data.augment_p": 0.5, "meanflow.ratio": 0.5, "train.batch_size": 8,
            "train.steps": 3, "train.checkpoint_every": 3, "train.log_every": 1}
    eager = train(with_overrides(RunConfig(), base), tmp_path / "eager", progress=False)
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = train(with_overrides(RunConfig(), {**base, "train.compile": True}), tmp_path / "compiled", progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # torch.compile traced the loss
    a = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=False)["net"]
    b = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=False)["net"]
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=2e-5) for k in a)
    assert compiled.final_loss == pytest.approx(eager.final_loss, rel=1e-5)
