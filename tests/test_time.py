"""The (t, r) sampler."""
import pytest
import torch

from conftest import mf
from workbench.meanflow import parse_time_dist, sample_t_r, sample_time

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


@pytest.mark.parametrize("bad", ["normal(0,1)", "lognorm(0,0)", "uniform(0.5,0.2)", "uniform(0,2)", "lognorm(0)"])
def test_bad_distribution_specs_are_rejected(bad):
    with pytest.raises(ValueError, match="time distribution"):
        parse_time_dist(bad)
