"""Improved MeanFlow's guidance as network inputs (meanflow.imf.guidance = omega | interval): the inputs on every
network, the draws of (omega, t_min, t_max) by the authors' formulas, the loss against an independent float64
computation of their guidance_fn, and the choice at sampling time (eval.omega, eval.interval)."""
import math

import pytest
import torch
from test_loss import B, batch, finite_difference_dudt
from test_objectives import NETS, random_net, weighted

from workbench.config import ConfigError, RunConfig, with_overrides
from workbench.meanflow import sample, sample_t_r
from workbench.meanflow.objectives import imf_loss

from conftest import mf

GUIDED = {"meanflow.objective": "imf", "meanflow.imf.guidance": "interval", "data.name": "gaussians"}


def rows(omega, t_min, t_max, n=B):
    return torch.tensor([omega, t_min, t_max], dtype=torch.float64).expand(n, 3)


@pytest.mark.parametrize(("arch", "shape"), NETS)
def test_every_network_takes_the_guidance_inputs(arch, shape):
    """Built with guidance_cond, a network's output depends on (omega, t_min, t_max); none given means omega 1 on
    [0, 1]; a network built without them refuses them."""
    plain = random_net(arch, shape, num_classes=3)
    net = random_net(arch, shape, num_classes=3, guidance_cond=True)
    x, t, r, _ = batch(shape)
    labels = torch.arange(B) % 3
    assert torch.equal(net(x, t, r, labels), net(x, t, r, labels, guidance=rows(1.0, 0.0, 1.0)))
    for changed in (rows(3.0, 0.0, 1.0), rows(1.0, 0.3, 1.0), rows(1.0, 0.0, 0.7)):
        assert not torch.allclose(net(x, t, r, labels, guidance=changed), net(x, t, r, labels))
    with pytest.raises(ValueError, match="built without them"):
        plain(x, t, r, labels, guidance=rows(2.0, 0.0, 1.0))


def test_the_draws_follow_the_authors_formulas():
    """omega = exp(U ln omega_max) (sample_cfg_scale, cfg_beta 1); interval: t_min = U[0, 0.5], t_max = U[0.5, 1]
    from the next draws, [0, 1] on the r = t rows (sample_cfg_interval); guidance = omega: [0, 1] on every row."""
    from workbench.run.train import draw_guidance

    config = with_overrides(RunConfig(), GUIDED | {"meanflow.imf.omega_max": 5.0})
    t, r = sample_t_r(4096, config.meanflow, torch.Generator().manual_seed(1))
    drawn = draw_guidance(t, r, config, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    u, lo, hi = (torch.rand(4096, generator=g) for _ in range(3))
    fm = r == t
    assert torch.allclose(drawn[:, 0], torch.exp(u * math.log(5.0)))
    assert torch.equal(drawn[:, 1], torch.where(fm, 0.0, 0.5 * lo))
    assert torch.equal(drawn[:, 2], torch.where(fm, 1.0, 0.5 + 0.5 * hi))
    assert float(drawn[:, 0].min()) >= 1.0 and float(drawn[:, 0].max()) <= 5.0
    assert abs(float(drawn[:, 0].log().mean()) - math.log(5.0) / 2) < 0.03  # log omega uniform on [0, ln 5]
    omega_only = draw_guidance(t, r, with_overrides(config, {"meanflow.imf.guidance": "omega"}),
                               torch.Generator().manual_seed(7))
    assert torch.equal(omega_only[:, 0], drawn[:, 0])
    assert torch.equal(omega_only[:, 1:], torch.tensor([0.0, 1.0]).expand(4096, 2))


@pytest.mark.parametrize(("arch", "shape"), NETS)
def test_the_guided_loss_matches_an_independent_computation(arch, shape):
    """The authors' guidance_fn with guidance inputs: w = omega where t_min <= t <= t_max, else 1; v_c = the
    boundary at (z, t, t | c) fed (w, 0, 1), v_u at the null class fed (1, 0, 1); v~ = v + (1 - 1/w)(v_c - v_u)
    on kept labels; u and d/dt u (a central difference along (v_c, 0, 1)) fed the drawn (omega, t_min, t_max)."""
    net = random_net(arch, shape, num_classes=3, guidance_cond=True)
    x, t, r, noise = batch(shape)
    labels, dropped = torch.arange(B) % 3, torch.arange(B) % 5 == 0
    g = torch.Generator().manual_seed(3)
    drawn = torch.stack([1 + 3 * torch.rand(B, generator=g, dtype=torch.float64),
                         0.5 * torch.rand(B, generator=g, dtype=torch.float64),
                         0.5 + 0.5 * torch.rand(B, generator=g, dtype=torch.float64)], dim=1)
    config = mf(objective="imf", imf={"guidance": "interval", "v_loss": 0.5}, adaptive_p=1.0, adaptive_c=0.01)
    loss, _ = imf_loss(net, x, t, r, noise, config, labels=labels, dropped=dropped, guidance=drawn)

    tb = t.view(-1, *[1] * len(shape))
    z, v = (1 - tb) * x + tb * noise, noise - x
    inside = (drawn[:, 1] <= t) & (t <= drawn[:, 2])
    w = torch.where(inside, drawn[:, 0], 1.0)
    null, kept = torch.full_like(labels, 3), torch.where(dropped, 3, labels)
    ones, zeros = torch.ones(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64)
    with torch.no_grad():
        v_c = net(z, t, t, labels, guidance=torch.stack([w, zeros, ones], 1))
        v_u = net(z, t, t, null, guidance=torch.stack([ones, zeros, ones], 1))
    gain = (1 - 1 / w).view_as(tb)
    target = torch.where((~dropped).view_as(tb), v + gain * (v_c - v_u), v)
    fed = lambda z_, t_, r_, labels_: net(z_, t_, r_, labels_, guidance=drawn)  # noqa: E731
    dudt = finite_difference_dudt(fed, z, r, t, (v_c, 0.0, 1.0), labels=kept, eps=1e-6).detach()
    compound = fed(z, t, r, kept) + (t - r).view_as(tb) * dudt
    expected = weighted(compound, target, 1.0, 0.01) + 0.5 * weighted(fed(z, t, t, kept), target, 1.0, 0.01)
    assert inside.any() and (~inside).any() and (~dropped & inside).any()
    assert torch.allclose(loss, expected, rtol=1e-7), (loss, expected)


def test_sampling_feeds_the_chosen_guidance_and_scores_against_its_exact_target():
    """The evaluator samples the network fed (eval.omega, *eval.interval) and targets the exact flow of the field
    guided at eval.omega on eval.interval; a run with guidance trained in targets cfg_omega / (1 - kappa)."""
    from workbench.evaluate.evaluators import evaluator_for
    from workbench.run.model import sampling_net

    config = with_overrides(RunConfig(), GUIDED | {"eval.omega": 3.0, "eval.interval": "0.2,0.7"})
    assert config.sampled_guidance() == (3.0, (0.2, 0.7))
    assert evaluator_for(config).info["exact_guidance"] == 3.0
    trained_in = with_overrides(RunConfig(), {"data.name": "gaussians", "meanflow.cfg_omega": 1.5,
                                              "meanflow.cfg_kappa": 0.5})
    assert trained_in.sampled_guidance() == (3.0, (0.0, 1.0)) and sampling_net(torch.nn.Linear(1, 1), trained_in)

    net = random_net("mlp", (2,), num_classes=8, guidance_cond=True).float()
    noise, labels = torch.randn(64, 2), torch.arange(64) % 8
    chosen = sampling_net(net, config)
    fed = lambda z, t, r, labels_: net(z, t, r, labels_, guidance=torch.tensor([3.0, 0.2, 0.7]).expand(len(z), 3))  # noqa: E731
    assert torch.equal(sample(chosen, noise, 2, labels), sample(fed, noise, 2, labels))
    assert not torch.allclose(sample(chosen, noise, 1, labels), sample(net, noise, 1, labels))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"data.name": "gaussians", "eval.omega": 2.0}, "eval.omega=2.0: the guidance chosen at sampling time needs"),
    (GUIDED | {"meanflow.cfg_omega": 2.0}, "leave meanflow.cfg_omega at 1"),
    (GUIDED | {"meanflow.cfg_t_lo": 0.2}, "leave meanflow.cfg_omega at 1 and cfg_t_lo"),
    ({"meanflow.objective": "imf", "meanflow.imf.omega_max": 4.0}, "omega_max=4.0 bounds the drawn"),
    (GUIDED | {"meanflow.imf.guidance": "omega", "eval.interval": "0.2,0.8"}, "trains guidance on \\[0, 1\\] only"),
    (GUIDED | {"eval.interval": "0.8,0.2"}, "eval.interval.*0 <= t_min <= t_max <= 1"),
    (GUIDED | {"eval.omega": 0.5}, "eval.omega=0.5"),
    (GUIDED | {"data.labels": False}, "guides towards class labels: set data.labels=true"),
    ({"meanflow.imf.guidance": "interval"}, r"meanflow.imf.\* is set .* objective='meanflow'")])
def test_guidance_options_that_cannot_act_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        with_overrides(RunConfig(), overrides)


def test_a_data_set_without_classes_is_refused_when_the_network_is_built():
    from workbench.data import load_data
    from workbench.run.model import build_net

    config = with_overrides(RunConfig(), GUIDED | {"data.name": "checkerboard"})
    with pytest.raises(ConfigError, match="data.name='checkerboard' has none"):
        build_net(config, load_data("checkerboard", "train"))
