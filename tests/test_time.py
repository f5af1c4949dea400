"""The (t, r) sampler."""
import math

import numpy as np
import pytest
import torch

from workbench.meanflow import parse_time_dist, sample_t_r, sample_time

from conftest import mf

N = 200_000


@pytest.mark.parametrize("spec", ["uniform(0,1)", "lognorm(-0.4,1.0)", "lognorm(-2,2)"])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0])
def test_t_at_least_r_and_in_unit_interval(spec, ratio):
    t, r = sample_t_r(N, mf(t_dist=spec, ratio=ratio), torch.Generator().manual_seed(0))
    assert t.shape == r.shape == (N,)
    assert bool((t >= r).all()) and bool((r >= 0).all()) and bool((t <= 1).all())


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_fraction_r_neq_t_random_mask(ratio):
    t, r = sample_t_r(N, mf(ratio=ratio), torch.Generator().manual_seed(1))
    assert abs((t != r).float().mean().item() - ratio) < 0.005


def test_prefix_mask_is_exact_and_a_prefix():
    t, r = sample_t_r(100, mf(ratio=0.25, ratio_mask="prefix"), torch.Generator().manual_seed(0))
    assert bool((t[:75] == r[:75]).all()) and bool((t[75:] != r[75:]).all())


def test_logit_normal_moments():
    s = sample_time("lognorm(-0.4,1.2)", N, torch.Generator().manual_seed(2))
    logit = torch.log(s / (1 - s))
    assert abs(logit.mean().item() + 0.4) < 0.01
    assert abs(logit.std().item() - 1.2) < 0.01


def test_uniform_moments():
    s = sample_time("uniform(0,1)", N, torch.Generator().manual_seed(3))
    assert abs(s.mean().item() - 0.5) < 0.005 and abs(s.var().item() - 1 / 12) < 0.002


def test_t_is_max_and_r_min_of_two_draws():
    """Distribution of t = max of two U(0,1): P(t <= a) = a^2; r = min: P(r <= a) = 1 - (1 - a)^2."""
    t, r = sample_t_r(N, mf(t_dist="uniform(0,1)", ratio=1.0), torch.Generator().manual_seed(4))
    assert abs((t <= 0.5).float().mean().item() - 0.25) < 0.005
    assert abs((r <= 0.5).float().mean().item() - 0.75) < 0.005


def test_separate_r_distribution():
    t, r = sample_t_r(N, mf(t_dist="lognorm(-0.6,1.6)", r_dist="lognorm(-4,1.6)", ratio=1.0),
                      torch.Generator().manual_seed(5))
    assert bool((t >= r).all())
    assert r.median() < 0.05 < t.median()


def test_same_generator_state_gives_same_draws():
    a = sample_t_r(64, mf(), torch.Generator().manual_seed(7))
    b = sample_t_r(64, mf(), torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("bad", ["normal(0,1)", "lognorm(0,0)", "uniform(0.5,0.2)", "uniform(0,2)", "lognorm(0)",
                                 "uniform(0.5,0.5)", "lognorm(1e999,1)"])
def test_bad_distribution_specs_are_rejected(bad):
    with pytest.raises(ValueError, match="time distribution"):
        parse_time_dist(bad)


def _logit_normal_mean(mu: float, sigma: float) -> float:
    """E[sigmoid(N(mu, sigma^2))] by Gauss-Hermite quadrature (independent of the sampler)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    return float((weights / np.sqrt(2 * np.pi) / (1 + np.exp(-(mu + sigma * nodes)))).sum())


def test_pytorch_v1_sampler_statistics_at_its_cifar10_setting():
    """v1 keeps t ~ lognorm(-0.6, 1.6), masks, then r = min(t, r): r != t for ratio * P(r draw < t draw),
    with P = Phi(3.4 / (1.6 sqrt 2)) since the logits differ by N(3.4, 2 * 1.6^2)."""
    n = 1_000_000
    config = mf(t_dist="lognorm(-0.6,1.6)", r_dist="lognorm(-4,1.6)", ratio=0.75, tr_sampler="v1")
    t, r = sample_t_r(n, config, torch.Generator().manual_seed(11))
    assert bool((t >= r).all())
    expected_fraction = 0.75 * 0.5 * math.erfc(-3.4 / (1.6 * math.sqrt(2)) / math.sqrt(2))
    assert abs((t != r).double().mean().item() - expected_fraction) < 0.002  # 0.700
    assert abs(t.double().mean().item() - _logit_normal_mean(-0.6, 1.6)) < 0.002  # 0.399
    # the paper's sampler (v0) at the same setting: t = max of the two draws, r != t for exactly 75%
    t0, r0 = sample_t_r(n, config.model_copy(update={"tr_sampler": "v0"}), torch.Generator().manual_seed(11))
    assert abs((t0 != r0).double().mean().item() - 0.75) < 0.002
    assert t0.double().mean().item() > t.double().mean().item() + 0.003
    # t's distribution: v1 leaves it logit-normal (KS distance to the v0 t is what v0's max adds)
    logit = torch.log(t / (1 - t)).double()
    assert abs(logit.mean().item() + 0.6) < 0.005 and abs(logit.std().item() - 1.6) < 0.005


def test_v0_sampler_is_unchanged_by_tr_sampler_option():
    """The default 'v0' draws the same numbers as before the option existed: t = max, r = min, mask."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.sigmoid(-0.4 + torch.randn(64, generator=g)), torch.sigmoid(-0.4 + torch.randn(64, generator=g))
    keep = torch.rand(64, generator=g) < 0.25
    t, r = sample_t_r(64, mf(ratio=0.25), torch.Generator().manual_seed(3))
    assert torch.equal(t, torch.maximum(a, b)) and torch.equal(r, torch.where(keep, torch.minimum(a, b), t))


def test_specs_may_have_spaces():
    assert parse_time_dist(" lognorm( -0.4 , 1.0 ) ") == ("lognorm", -0.4, 1.0)
    assert parse_time_dist("uniform(0, 1)") == ("uniform", 0.0, 1.0)


def test_uniform_on_a_sub_interval_and_drawn_from_the_given_generator():
    torch.manual_seed(0)  # the global generator must play no part
    s = sample_time("uniform(0.2,0.6)", N, torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    assert torch.equal(s, sample_time("uniform(0.2,0.6)", N, torch.Generator().manual_seed(3)))
    assert s.min() >= 0.2 and s.max() <= 0.6 and abs(s.mean().item() - 0.4) < 0.002
    assert torch.equal(s, 0.2 + 0.4 * torch.rand(N, generator=torch.Generator().manual_seed(3)))


def test_ratio_zero_is_flow_matching_on_every_row_even_a_draw_of_exactly_zero():
    """torch.rand draws multiples of 2^-24, so 0.0 comes up: the mask must still send that row to r = t.
    Seed 1 puts a 0.0 among the mask's draws (the third draw of the generator, after a and b)."""
    n, g = 1 << 20, torch.Generator().manual_seed(1)
    torch.rand(n, generator=g), torch.rand(n, generator=g)
    assert bool((torch.rand(n, generator=g) == 0).any())  # else pick another seed: the test needs the zero
    t, r = sample_t_r(n, mf(t_dist="uniform(0,1)", ratio=0.0), torch.Generator().manual_seed(1))
    assert torch.equal(t, r)
