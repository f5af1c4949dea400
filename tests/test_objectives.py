"""The objectives after MeanFlow (workbench/meanflow/objectives.py), the tangent coefficient beta and the
finite-difference d/dt u against independent float64 computations of their equations
(../shared/reference/successors.md), their limits that are MeanFlow, and short trainings on the closed-form case."""
import math

import pytest
import torch
from test_closed_form import MU, Exact, S, average_velocity, stats
from test_loss import B, batch, finite_difference_dudt

from workbench.meanflow import central_difference, meanflow_loss, sample_t_r
from workbench.meanflow.dudt import whole_batch
from workbench.meanflow.objectives import alpha_at, alphaflow_loss, imf_loss, mmf_lambda, mmf_loss, splitmeanflow_loss

from conftest import mf, small_net

NETS = [("mlp", (2,)), ("unet", (1, 8, 8)), ("dit", (1, 8, 8)), ("songunet", (3, 8, 8))]


def random_net(arch, shape, **options):
    net = small_net(arch, shape=shape, **({"channels": 16, "channel_mult": (1, 2), "blocks": 1,
                                           "attn_resolutions": (4,), "dropout": 0.0} if arch == "songunet" else {}),
                    **options)
    for param in net.parameters():  # adaLN-Zero and zero-initialised outputs start at u = 0: randomise
        torch.nn.init.normal_(param, std=0.1)
    return net


def weighted(u, u_tgt, p, c):
    sq = ((u - u_tgt) ** 2).reshape(len(u), -1).sum(1)
    return ((1.0 / (sq.detach() + c) ** p) * sq).mean()


@pytest.mark.parametrize(("arch", "shape"), NETS)
def test_central_difference_equals_the_jvp_within_its_tolerance(arch, shape):
    """float64, d = 1e-4: the central difference is within 1e-5 of the exact JVP (relative to its largest entry); the
    r = t rows are 0."""
    net = random_net(arch, shape)
    x, t, r, noise = batch(shape)
    z = (1 - t.view(-1, *[1] * len(shape))) * x + t.view(-1, *[1] * len(shape)) * noise
    v = noise - x
    u_fd, fd = central_difference(1e-4)(net, z, t, r, v, None, (0.0, 1.0))
    u_jvp, jvp = whole_batch(net, z, t, r, v, None, (0.0, 1.0))
    assert torch.equal(u_fd, net(z, t, r, None))
    same = r == t
    assert torch.equal(fd[same], torch.zeros_like(fd[same]))
    error = (fd[~same] - jvp[~same]).abs().max() / jvp[~same].abs().max()
    assert error < 1e-5, error  # SongUNet's 2.8e-6 is rounding: it halves when d doubles


def test_finite_difference_refuses_a_network_with_active_dropout():
    net = small_net("songunet", shape=(3, 8, 8), channels=16, channel_mult=(1, 2), blocks=1, attn_resolutions=(4,),
                    dropout=0.1)
    x, t, r, noise = batch((3, 8, 8))
    with pytest.raises(ValueError, match="active dropout"):
        central_difference(5e-3)(net, x, t, r, noise, None, (0.0, 1.0))
    net.eval()  # no dropout at evaluation: allowed
    central_difference(5e-3)(net, x, t, r, noise, None, (0.0, 1.0))


def test_finite_difference_error_in_float32_at_the_default_step():
    """The stated tolerance: at d = 5e-3 in float32 the central difference is within 1% of the JVP (relative
    to its largest entry) on the MLP, and far closer than a wrong tangent."""
    net = random_net("mlp", (2,)).float()
    x, t, r, noise = (a.float() for a in batch())
    z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
    _, fd = central_difference(5e-3)(net, z, t, r, v, None, (0.0, 1.0))
    _, jvp = whole_batch(net, z, t, r, v, None, (0.0, 1.0))
    _, wrong = whole_batch(net, z, t, r, v, None, (1.0, 1.0))
    rows = r != t  # the JVP strategies' whole batch: compare where the target uses d/dt u
    fd, jvp, wrong = fd[rows], jvp[rows], wrong[rows]
    scale = jvp.abs().max()
    assert (fd - jvp).abs().max() / scale < 0.01, (fd - jvp).abs().max() / scale
    assert (wrong - jvp).abs().max() / scale > 0.05


def test_the_finite_difference_loss_trains_like_the_jvp_one():
    """The loss with central differences equals meanflow_loss's within the difference's error."""
    net = random_net("mlp", (2,))
    x, t, r, noise = batch()
    exact, _ = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.0))
    approx, _ = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.0), dudt=central_difference(1e-4))
    assert torch.allclose(approx, exact, rtol=1e-7)


@pytest.mark.parametrize(("arch", "shape"), NETS[:3])
def test_beta_loss_matches_an_independent_computation(arch, shape):
    """Tangent beta v + (1 - beta) u(z, t, t) (no gradient) in the JVP; the target keeps v."""
    net = random_net(arch, shape)
    x, t, r, noise = batch(shape)
    loss, _ = meanflow_loss(net, x, t, r, noise, mf(beta=0.6, adaptive_p=0.5))
    tb = t.view(-1, *[1] * len(shape))
    z, v = (1 - tb) * x + tb * noise, noise - x
    with torch.no_grad():
        tangent = 0.6 * v + 0.4 * net(z, t, t, None)
    dudt = finite_difference_dudt(net, z, r, t, (tangent, 0.0, 1.0), eps=1e-6)
    expected = weighted(net(z, t, r, None), (v - (t - r).view_as(tb) * dudt).detach(), 0.5, 1e-3)
    assert torch.allclose(loss, expected, rtol=1e-7)
    paper, _ = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.5))
    assert abs(float(paper.detach() - loss.detach())) > 1e-4 * float(paper.detach())  # the coefficient changes it


def test_beta_one_is_the_paper_without_an_extra_forward():
    calls = []
    net = random_net("mlp", (2,))
    counted = lambda *a, **k: calls.append(1) or net(*a, **k)  # noqa: E731
    counted.num_classes = 0
    x, t, r, noise = batch()
    paper, _ = meanflow_loss(counted, x, t, r, noise, mf(), dudt=whole_batch)
    n = len(calls)
    again, _ = meanflow_loss(counted, x, t, r, noise, mf(beta=1.0), dudt=whole_batch)
    assert torch.equal(paper, again) and len(calls) == 2 * n


def test_mmf_lambda_warms_up_linearly():
    config = mf(objective="mmf", mmf_lambda=0.8, mmf_warmup=100)
    assert [mmf_lambda(config, s) for s in (0, 50, 100, 400)] == pytest.approx([0.0, 0.4, 0.8, 0.8])
    assert mmf_lambda(mf(objective="mmf", mmf_lambda=0.3), 0) == 0.3


def test_mmf_at_lambda_zero_is_meanflow_bit_for_bit():
    net = random_net("mlp", (2,))
    x, t, r, noise = batch()
    config = mf(objective="mmf", mmf_lambda=0.0, adaptive_p=1.0)
    loss, metrics = mmf_loss(net, x, t, r, noise, config)
    paper, _ = meanflow_loss(net, x, t, r, noise, config)
    assert torch.equal(loss, paper) and float(metrics["mmf_lambda"]) == 0.0


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_mmf_gradient_matches_an_independent_double_backward(lam):
    """The loss value is MeanFlow's for every lambda; its gradient carries lambda of the gradient through
    d/dt u, computed here with torch.autograd.functional.jvp (create_graph) instead of torch.func.jvp."""
    net = random_net("mlp", (2,))
    x, t, r, noise = batch()
    config = mf(objective="mmf", mmf_lambda=lam, adaptive_p=0.5)
    loss, _ = mmf_loss(net, x, t, r, noise, config, step=10)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
    u, dudt = torch.autograd.functional.jvp(lambda z_, t_: net(z_, t_, r, None), (z, t), (v, torch.ones_like(t)),
                                            create_graph=True)
    target = v - (t - r)[:, None] * (lam * dudt + (1 - lam) * dudt.detach())
    expected = weighted(u, target, 0.5, 1e-3)
    assert torch.allclose(loss, expected, rtol=1e-10)
    for got, want in zip(grads, torch.autograd.grad(expected, list(net.parameters()))):
        assert torch.allclose(got, want, rtol=1e-7, atol=1e-12)
    if lam:  # the modulation changes the gradient, not the value
        plain = torch.autograd.grad(meanflow_loss(net, x, t, r, noise, config)[0], list(net.parameters()))
        assert max(float((a - b).abs().max()) for a, b in zip(grads, plain)) > 1e-6


@pytest.mark.parametrize(("arch", "shape"), NETS[:3])
def test_splitmeanflow_loss_matches_an_independent_computation(arch, shape):
    net = random_net(arch, shape)
    x, t, r, noise = batch(shape)
    lam = torch.rand(B, dtype=torch.float64)
    loss, _ = splitmeanflow_loss(net, x, t, r, noise, mf(objective="splitmeanflow", adaptive_p=0.5), split=lam)
    tb, lb = t.view(-1, *[1] * len(shape)), lam.view(-1, *[1] * len(shape))
    z, v = (1 - tb) * x + tb * noise, noise - x
    with torch.no_grad():
        s = (1 - lam) * t + lam * r
        first = net(z, t, s, None)                               # u(z_t, s, t)
        second = net(z - (t - s).view_as(tb) * first, s, r, None)  # u(z_s, r, s)
        target = lb * first + (1 - lb) * second
        target[r == t] = v[r == t]
    assert torch.allclose(loss, weighted(net(z, t, r, None), target, 0.5, 1e-3), rtol=1e-10)


def test_splitmeanflow_target_of_the_exact_average_velocity_is_exact():
    """The semigroup property: with the closed-form u, the split target equals u(z_t, r, t) for any split."""
    g = torch.Generator().manual_seed(0)
    t, r = sample_t_r(256, mf(t_dist="uniform(0,1)", ratio=0.75), g)
    t, r = t.double().clamp(0.02, 0.98), r.double().clamp(0.0, 0.97)
    r = torch.where(r == t, t, torch.minimum(r, t - 0.01))
    m_t, s_t = stats(t)
    z = m_t + s_t * torch.randn(256, 2, dtype=torch.float64, generator=g)
    v = average_velocity(z, t, t)  # the marginal velocity: x, e chosen so that e - x is it at z_t
    x, e = z - t[:, None] * v, z + (1 - t[:, None]) * v
    loss, _ = splitmeanflow_loss(Exact(), x, t, r, e, mf(adaptive_p=0.0), split=torch.rand(256, generator=g).double())
    assert loss < 1e-20


def train_closed_form(objective: str, steps: int = 600, **options) -> float:
    """A short training on Gaussian data; the relative error of u against the exact average velocity."""
    torch.manual_seed(0)
    config = mf(objective=objective, ratio=0.5, t_dist="uniform(0,1)", adaptive_p=0.0, **options)
    net = small_net("mlp", dtype=torch.float32, width=64, depth=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    loss_fn = {"meanflow": meanflow_loss, "mmf": mmf_loss, "splitmeanflow": splitmeanflow_loss,
               "alphaflow": alphaflow_loss, "imf": imf_loss}[objective]
    for step in range(steps):
        x = MU.float() + S * torch.randn(256, 2, generator=g)
        t, r = sample_t_r(256, config, g)
        extra = {"split": torch.rand(256, generator=g)} if objective == "splitmeanflow" else {}
        if objective in ("mmf", "alphaflow") or config.curriculum.steps:
            extra["step"] = step
        if config.dudt == "finite_difference":
            extra["dudt"] = central_difference(config.fd_step)
        loss, _ = loss_fn(net, x, t, r, torch.randn(256, 2, generator=g), config, **extra)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    t = torch.rand(2048, dtype=torch.float64, generator=g)
    r = t * torch.rand(2048, dtype=torch.float64, generator=g)
    m_t, s_t = stats(t)
    z = m_t + s_t * torch.randn(2048, 2, dtype=torch.float64, generator=g)
    with torch.no_grad():
        u = net(z.float(), t.float(), r.float()).double()
    exact = average_velocity(z, t, r)
    return float((u - exact).norm(dim=1).mean() / exact.norm(dim=1).mean())


@pytest.mark.parametrize(("objective", "options"), [
    ("mmf", {"mmf_lambda": 0.5, "mmf_warmup": 200}), ("splitmeanflow", {}), ("meanflow", {"beta": 0.8}),
    ("meanflow", {"dudt": "finite_difference"}), ("alphaflow", {"alphaflow": {"start": 0, "end": 400}}),
    ("imf", {}), ("imf", {"imf": {"v_loss": 1.0}}), ("meanflow", {"curriculum": {"steps": 400}})])
def test_a_short_training_learns_the_exact_average_velocity(objective, options):
    """From above 0.5 (an untrained net) to within 0.2 of the exact u in 600 steps (measured: MeanFlow 0.095, beta
    0.8 0.096, SplitMeanFlow 0.12, MMF with lambda warmed up to 0.5 0.15, alpha-Flow with alpha from 1 to 0 over
    steps 0-400 0.11, iMF with the boundary tangent 0.097, with the auxiliary v loss 0.099, MeanFlow with
    the interval curriculum over 400 steps 0.089)."""
    assert train_closed_form(objective, steps=0, **options) > 0.5
    assert train_closed_form(objective, **options) < 0.2


@pytest.mark.parametrize("overrides", [{"meanflow.objective": "mmf", "meanflow.mmf_warmup": 4},
                                       {"meanflow.objective": "splitmeanflow"}, {"meanflow.dudt": "finite_difference"},
                                       {"meanflow.beta": 0.5},
                                       {"meanflow.objective": "alphaflow", "meanflow.alphaflow.end": 8},
                                       {"meanflow.objective": "imf", "meanflow.imf.v_loss": 1.0},
                                       {"meanflow.curriculum.steps": 6},
                                       {"meanflow.objective": "imf", "meanflow.imf.tangent": "head", "net.v_head": True,
                                        "meanflow.imf.v_loss": 1.0},
                                       {"meanflow.objective": "imf", "meanflow.imf.guidance": "interval",
                                        "eval.omega": 2.0, "eval.interval": (0.1, 0.9)}])
def test_the_training_loop_trains_each_objective_and_resumes_it_exactly(tmp_path, overrides):
    """wb train's loop: the objective's loss from the config (its step, its split draws and iMF's guidance inputs
    from the batch generator), and a run stopped at step 4 and resumed ends with the same weights as one run
    straight through."""
    from workbench.config import RunConfig, with_overrides
    from workbench.run.train import train

    base = {"net.mlp.width": 16, "net.mlp.depth": 1, "train.batch_size": 32, "train.device": "cpu",
            "train.log_every": 2, "sample.num_points": 50, "data.name": "gaussians", **overrides}
    whole = train(with_overrides(RunConfig(), {**base, "train.steps": 8}), tmp_path / "whole", progress=False)
    train(with_overrides(RunConfig(), {**base, "train.steps": 4}), tmp_path / "half", progress=False)
    resumed = train(with_overrides(RunConfig(), {**base, "train.steps": 8}), tmp_path / "half", resume=True,
                    progress=False)
    for a, b in zip(whole.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)
    assert torch.isfinite(torch.tensor(whole.final_loss))


def test_alpha_follows_the_authors_sigmoid_from_one_to_zero_over_its_window():
    """alpha-Flow's get_ratio('sigmoid', 1 -> 0, window [200, 600], gamma 25, clamp 0.005) by hand: 1 before, 0 from
    the end, 1 - sigmoid(25 (step - 400) / 400) inside, snapped to 0 / 1 within 0.005."""
    config = mf(objective="alphaflow", alphaflow={"start": 200, "end": 600}).alphaflow
    expected = {0: 1.0, 199: 1.0, 200: 1.0, 300: None, 350: 1 - 1 / (1 + math.exp(-25 * -0.125)), 400: 0.5,
                450: 1 - 1 / (1 + math.exp(-25 * 0.125)), 500: None, 580: 0.0, 600: 0.0}
    assert 1 - 1 / (1 + math.exp(-25 * -0.25)) > 0.995 and 1 - 1 / (1 + math.exp(-6.25)) < 0.005
    expected[300], expected[500] = 1.0, 0.0  # 0.998 and 0.0019: snapped
    assert {step: alpha_at(config, step) for step in expected} == pytest.approx(expected, abs=1e-15)
    assert alpha_at(mf(objective="alphaflow").alphaflow, 0) == 0.0  # the default window: MeanFlow throughout


def alphaflow_at(alpha_step: int, **options):
    """A config whose alpha at step alpha_step is strictly between 0 and 1 (window [0, 1000])."""
    return mf(objective="alphaflow", alphaflow={"start": 0, "end": 1000, **options}, adaptive_p=0.5)


@pytest.mark.parametrize(("arch", "shape"), NETS)
def test_alphaflow_loss_matches_an_independent_computation(arch, shape):
    """Eq. 7 of alpha-Flow as the authors' _compute_mean_velocity_d writes it: (dt v + (t - dt - r) u(z_t - dt v, r,
    t - dt)) / (t - r), dt = alpha (t - r), on the r < t rows (weight alpha), v on the r = t rows (weight 1)."""
    net = random_net(arch, shape)
    x, t, r, noise = batch(shape)
    config = alphaflow_at(450)
    alpha = alpha_at(config.alphaflow, 450)
    assert 0.1 < alpha < 0.9
    loss, metrics = alphaflow_loss(net, x, t, r, noise, config, step=450)
    tb = t.view(-1, *[1] * len(shape))
    z, v = (1 - tb) * x + tb * noise, noise - x
    target, weight = v.clone(), torch.ones(B, dtype=torch.float64)
    for i in range(B):
        if r[i] < t[i]:
            dt = alpha * (t[i] - r[i])
            with torch.no_grad():
                u_next = net((z[i] - dt * v[i])[None], (t[i] - dt)[None], r[i][None], None)[0]
            target[i] = (dt * v[i] + (t[i] - dt - r[i]) * u_next) / (t[i] - r[i])
            weight[i] = alpha
    sq = ((net(z, t, r, None) - target) ** 2).reshape(B, -1).sum(1)
    expected = (weight * sq / (sq.detach() + 1e-3) ** 0.5).mean()
    assert torch.allclose(loss, expected, rtol=1e-10) and float(metrics["alpha"]) == pytest.approx(alpha, rel=1e-7)


def test_alphaflow_clamp_clips_the_target_of_the_interval_rows_only():
    net = random_net("mlp", (2,))
    x, t, r, noise = batch()
    noise = 5 * noise  # targets beyond the clamp
    config = alphaflow_at(450, clamp=1.0)
    loss, _ = alphaflow_loss(net, x, t, r, noise, config, step=450)
    alpha = alpha_at(config.alphaflow, 450)
    z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
    dt = alpha * (t - r)
    with torch.no_grad():
        target = alpha * v + (1 - alpha) * net(z - dt[:, None] * v, t - dt, r, None)
    assert (v[r == t].abs() > 1).any() and (target[r < t].abs() > 1).any()
    target = torch.where((r == t)[:, None], v, target.clamp(-1, 1))  # the boundary rows keep their unclipped v
    weight = torch.where(r == t, torch.tensor(1.0, dtype=torch.float64), torch.tensor(alpha, dtype=torch.float64))
    sq = ((net(z, t, r, None) - target) ** 2).sum(1)
    assert torch.allclose(loss, (weight * sq / (sq.detach() + 1e-3) ** 0.5).mean(), rtol=1e-10)


def test_alphaflow_at_alpha_zero_is_meanflow_bit_for_bit_and_at_one_is_trajectory_flow_matching():
    net = random_net("mlp", (2,))
    x, t, r, noise = batch()
    config = mf(objective="alphaflow", alphaflow={"start": 10, "end": 20}, adaptive_p=1.0)
    late, metrics = alphaflow_loss(net, x, t, r, noise, config, step=20)
    paper, _ = meanflow_loss(net, x, t, r, noise, config)
    assert torch.equal(late, paper) and float(metrics["alpha"]) == 0.0
    early, metrics = alphaflow_loss(net, x, t, r, noise, config, step=0)
    z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
    assert float(metrics["alpha"]) == 1.0
    assert torch.allclose(early, weighted(net(z, t, r, None), v, 1.0, 1e-3), rtol=1e-12)


def test_alphaflow_loss_tends_to_the_meanflow_loss_as_alpha_goes_to_zero():
    """Proposition 1 of alpha-Flow: u_tgt - u = alpha (u_tgt_MeanFlow - u) + O(alpha^2), so with p = 0 on r < t rows
    the loss alpha ||u - u_tgt||^2 over alpha^3 tends to MeanFlow's ||u - u_tgt||^2, the gap shrinking like alpha.
    Steps 656 and 684 of a [0, 1000] window put alpha near 0.02 and 0.01 (above the snap to 0)."""
    net = random_net("mlp", (2,))
    x, t, r, noise = batch()
    keep = r < t
    x, t, r, noise = x[keep], t[keep], r[keep], noise[keep]
    paper = float(meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.0))[0])
    config = mf(objective="alphaflow", alphaflow={"start": 0, "end": 1000}, adaptive_p=0.0)
    gaps = []
    for step in (656, 684):
        alpha = alpha_at(config.alphaflow, step)
        loss, _ = alphaflow_loss(net, x, t, r, noise, config, step=step)
        gaps.append(abs(float(loss) / alpha ** 3 - paper) / paper)
    assert [round(alpha_at(config.alphaflow, s), 3) for s in (656, 684)] == [0.02, 0.01]
    assert gaps[0] < 0.1 and gaps[1] < 0.6 * gaps[0], gaps


def test_alphaflow_options_need_the_alphaflow_objective():
    from workbench.config import ConfigError, RunConfig, with_overrides

    with pytest.raises(ConfigError, match=r"alphaflow.\* is set .* objective='meanflow'"):
        with_overrides(RunConfig(), {"meanflow.alphaflow.end": 100})
    with pytest.raises(ConfigError, match="alphaflow.start=100 must be <= alphaflow.end=0"):
        with_overrides(RunConfig(), {"meanflow.objective": "alphaflow", "meanflow.alphaflow.start": 100})


@pytest.mark.parametrize(("arch", "shape"), NETS)
def test_imf_loss_matches_an_independent_computation(arch, shape):
    """iMF's loss_u (imf.py, iMeanFlow.forward): V = u + (t - r) sg(d/dt u) against sg(v), d/dt u a central
    difference along (v_c, 0, 1) with v_c = u(z, t, t), adaptively weighted; plus v_loss w(||u(z, t, t) - v||^2)."""
    net = random_net(arch, shape)
    x, t, r, noise = batch(shape)
    config = mf(objective="imf", adaptive_p=1.0, adaptive_c=0.01, imf={"v_loss": 0.5})
    loss, metrics = imf_loss(net, x, t, r, noise, config)
    tb = t.view(-1, *[1] * len(shape))
    z, v = (1 - tb) * x + tb * noise, noise - x
    with torch.no_grad():
        v_c = net(z, t, t, None)
    dudt = finite_difference_dudt(net, z, r, t, (v_c, 0.0, 1.0), eps=1e-6).detach()
    compound = net(z, t, r, None) + (t - r).view_as(tb) * dudt
    expected = weighted(compound, v, 1.0, 0.01) + 0.5 * weighted(net(z, t, t, None), v, 1.0, 0.01)
    assert torch.allclose(loss, expected, rtol=1e-7), (loss, expected)
    assert float(metrics["loss_v"]) > 0


def test_imf_with_the_e_minus_x_tangent_is_the_meanflow_loss_and_gradient():
    """V - v = u - (v - (t - r) d/dt u): with MeanFlow's tangent the compound-velocity loss is MeanFlow's u-loss."""
    net = random_net("mlp", (2,))
    x, t, r, noise = batch()
    config = mf(objective="imf", imf={"tangent": "v"}, adaptive_p=0.5)
    loss, _ = imf_loss(net, x, t, r, noise, config)
    paper, _ = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.5))
    assert torch.allclose(loss, paper, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(loss, list(net.parameters())), torch.autograd.grad(paper, list(net.parameters()))):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    boundary, _ = imf_loss(net, x, t, r, noise, mf(objective="imf", adaptive_p=0.5))
    assert abs(float((boundary - paper).detach())) > 1e-3 * float(paper.detach())  # the boundary tangent changes it


def test_imf_guidance_uses_the_networks_own_conditional_and_null_velocities():
    """v~ = v + (1 - 1/omega)(u(z, t, t | c) - u(z, t, t | null)) on kept labels inside [cfg_t_lo, cfg_t_hi], v
    elsewhere; v_c (tangent and guidance) sees the label before dropout, u the label after."""
    net = small_net("mlp", num_classes=3)
    for param in net.parameters():
        torch.nn.init.normal_(param, std=0.1)
    x, t, r, noise = batch()
    labels = torch.arange(B) % 3
    dropped = torch.arange(B) % 5 == 0
    config = mf(objective="imf", cfg_omega=2.0, cfg_t_hi=0.8, adaptive_p=0.0)
    loss, _ = imf_loss(net, x, t, r, noise, config, labels=labels, dropped=dropped)
    z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
    null = torch.full_like(labels, 3)
    kept = torch.where(dropped, null, labels)
    with torch.no_grad():
        v_c, v_u = net(z, t, t, labels), net(z, t, t, null)
    guided = (t <= 0.8) & ~dropped
    target = torch.where(guided[:, None], v + 0.5 * (v_c - v_u), v)
    dudt = finite_difference_dudt(net, z, r, t, (v_c, 0.0, 1.0), labels=kept, eps=1e-6).detach()
    compound = net(z, t, r, kept) + (t - r)[:, None] * dudt
    assert guided.any() and (~guided).any()
    assert torch.allclose(loss, ((compound - target) ** 2).sum(1).mean(), rtol=1e-7)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"meanflow.imf.v_loss": 1.0}, r"meanflow.imf.\* is set .* objective='meanflow'"),
    ({"meanflow.objective": "imf", "meanflow.cfg_kappa": 0.5}, "cfg_kappa and beta must stay at 0 and 1"),
    ({"meanflow.objective": "imf", "meanflow.imf.tangent": "vhead"}, "meanflow.imf.tangent='vhead'"),
    ({"meanflow.objective": "imf", "meanflow.imf.tangent": "head"}, "net.v_head=False .* which needs it"),
    ({"net.v_head": True}, "net.v_head=True with meanflow.objective='meanflow'")])
def test_imf_options_that_cannot_act_are_refused(overrides, message):
    from workbench.config import ConfigError, RunConfig, with_overrides

    with pytest.raises(ConfigError, match=message):
        with_overrides(RunConfig(), overrides)


def test_the_interval_curriculum_weights_short_intervals_first_then_all_alike():
    """1 - s + lambda s (1 - dt), s = 1 - (step / steps)^k, lambda = 1 / mean(1 - dt), by hand on dt = 0, 0.5, 1, 0.5
    (mean(1 - dt) = 0.5): at step 0 (s = 1) the weights are 2, 1, 0, 1; half-way with k = 1 (s = 0.5) 1.5, 1, 0.5, 1;
    with k = 2 (s = 0.75) 1.75, 1, 0.25, 1; from `steps` on none (uniform)."""
    from workbench.meanflow.loss import interval_weight

    dt = torch.tensor([0.0, 0.5, 1.0, 0.5], dtype=torch.float64)
    config = mf(curriculum={"steps": 100})
    assert interval_weight(config, dt, 0).tolist() == [2.0, 1.0, 0.0, 1.0]
    assert interval_weight(config, dt, 50).tolist() == [1.5, 1.0, 0.5, 1.0]
    assert interval_weight(mf(curriculum={"steps": 100, "power": 2.0}), dt, 50).tolist() == [1.75, 1.0, 0.25, 1.0]
    assert interval_weight(config, dt, 100) is None and interval_weight(mf(), dt, 0) is None


def test_the_curriculum_loss_is_the_meanflow_loss_reweighted_and_off_after_its_steps():
    net = random_net("mlp", (2,))
    x, t, r, noise = batch()
    config = mf(curriculum={"steps": 10}, adaptive_p=0.5)
    early, _ = meanflow_loss(net, x, t, r, noise, config, step=0)
    short = 1 - (t - r)
    z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
    dudt = finite_difference_dudt(net, z, r, t, (v, 0.0, 1.0), eps=1e-6)
    sq = ((net(z, t, r, None) - (v - (t - r)[:, None] * dudt).detach()) ** 2).sum(1)
    expected = (short / short.mean() * sq / (sq.detach() + 1e-3) ** 0.5).mean()
    assert torch.allclose(early, expected, rtol=1e-7)
    late, _ = meanflow_loss(net, x, t, r, noise, config, step=10)
    assert torch.equal(late, meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.5))[0])


def test_the_curriculum_is_an_option_of_the_meanflow_objective_only():
    from workbench.config import ConfigError, RunConfig, with_overrides

    with pytest.raises(ConfigError, match=r"meanflow.curriculum.\* is set .* objective='splitmeanflow'"):
        with_overrides(RunConfig(), {"meanflow.objective": "splitmeanflow", "meanflow.curriculum.steps": 100})


@pytest.mark.parametrize(("arch", "shape"), NETS)
def test_the_v_head_is_a_second_output_of_the_same_trunk(arch, shape):
    """net(..., head="v") runs the trunk with the v-head's own output layers; the u-head is unchanged by having one."""
    torch.manual_seed(0)
    plain = random_net(arch, shape)
    torch.manual_seed(0)
    net = random_net(arch, shape, v_head=True)
    x, t, r, _ = batch(shape)
    assert torch.equal(net(x, t, r, None), plain(x, t, r, None))  # the extra head takes no draw before the u-head's
    for param in net.v_out.parameters():
        torch.nn.init.normal_(param, std=0.1)
    v = net(x, t, r, None, head="v")
    assert v.shape == x.shape and not torch.allclose(v, net(x, t, r, None))
    with pytest.raises(ValueError, match="needs a network built with a v-head"):
        plain(x, t, r, None, head="v")


def test_the_dit_v_head_can_repeat_the_last_blocks_with_its_own_weights():
    """net.dit.v_head_blocks = k: head="v" runs the first depth - k blocks, then k blocks of its own (the authors' iMF
    DiTs: the last 8); with the same weights the u-head is the network's without them; k blocks' parameters more;
    each block set moves only the heads that run it."""
    plain = random_net("dit", (1, 8, 8), v_head=True)
    net = random_net("dit", (1, 8, 8), v_head=True, v_head_blocks=2)
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and {name.split(".")[0] for name in missing} == {"v_blocks"}
    x, t, r, _ = batch((1, 8, 8))
    assert torch.equal(net(x, t, r, None), plain(x, t, r, None))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(net) - count(plain) == 2 * count(net.blocks[0])
    u, v = net(x, t, r, None), net(x, t, r, None, head="v")
    with torch.no_grad():
        for param in net.v_blocks.parameters():
            param.add_(0.1)
    assert torch.equal(net(x, t, r, None), u) and not torch.allclose(net(x, t, r, None, head="v"), v)
    v = net(x, t, r, None, head="v")
    with torch.no_grad():
        for param in net.blocks[-1].parameters():
            param.add_(0.1)
    assert torch.equal(net(x, t, r, None, head="v"), v) and not torch.allclose(net(x, t, r, None), u)
    with torch.no_grad():
        for param in net.blocks[0].parameters():
            param.add_(0.1)
    assert not torch.allclose(net(x, t, r, None, head="v"), v)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"net.arch": "dit", "net.dit.v_head_blocks": 2}, "only with net.v_head=true"),
    ({"net.arch": "dit", "net.v_head": True, "meanflow.objective": "imf", "meanflow.imf.tangent": "head",
      "net.dit.v_head_blocks": 5}, "net.dit.v_head_blocks=5: the v-head repeats at most the 4 blocks")])
def test_v_head_blocks_that_cannot_act_are_refused(overrides, message):
    from workbench.config import ConfigError, RunConfig, with_overrides

    with pytest.raises(ConfigError, match=message):
        with_overrides(RunConfig(), overrides)


@pytest.mark.parametrize(("arch", "shape", "options"), [*((a, s, {}) for a, s in NETS[:3]),
                                                          ("dit", (1, 8, 8), {"v_head_blocks": 2})])
def test_imf_with_the_v_head_matches_an_independent_computation(arch, shape, options):
    """imf.tangent='head': v_c = the v-head at (z, t, t), the auxiliary loss on the v-head at (z, t, r) (imf.py:
    u_fn returns (u, v) from one call with h = t - r)."""
    net = random_net(arch, shape, v_head=True, **options)
    x, t, r, noise = batch(shape)
    config = mf(objective="imf", imf={"tangent": "head", "v_loss": 1.0}, adaptive_p=1.0, adaptive_c=0.01)
    loss, _ = imf_loss(net, x, t, r, noise, config)
    tb = t.view(-1, *[1] * len(shape))
    z, v = (1 - tb) * x + tb * noise, noise - x
    with torch.no_grad():
        v_c = net(z, t, t, None, head="v")
    dudt = finite_difference_dudt(net, z, r, t, (v_c, 0.0, 1.0), eps=1e-6).detach()
    compound = net(z, t, r, None) + (t - r).view_as(tb) * dudt
    expected = weighted(compound, v, 1.0, 0.01) + weighted(net(z, t, r, None, head="v"), v, 1.0, 0.01)
    assert torch.allclose(loss, expected, rtol=1e-7)


def test_splitmeanflow_without_boundary_rows_is_refused():
    """At ratio 1 no row has r = t, so no target is v: the objective has no anchor to the data."""
    from workbench.config import ConfigError, RunConfig, with_overrides

    with pytest.raises(ConfigError, match="ratio=1.0 has no r = t rows"):
        with_overrides(RunConfig(), {"meanflow.objective": "splitmeanflow", "meanflow.ratio": 1.0})
    with_overrides(RunConfig(), {"meanflow.objective": "splitmeanflow", "meanflow.ratio": 0.5})
