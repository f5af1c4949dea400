"""The spread ratio of 1-NFE samples against their exact target, the exact map's own scores and the u-error on
the run's own (t, r) sampler (workbench/evaluate/toy.py)."""
import math

import pytest
import torch

from workbench.data import exact_flow, index_noise
from workbench.evaluate.toy import exact_scores, exact_targets, point_scores, spread_ratio, toy_references


def shrunk(points: torch.Tensor, labels: torch.Tensor, s: float) -> torch.Tensor:
    """Each class's points pulled towards their class mean by the factor s."""
    out = points.clone()
    for c in labels.unique():
        mine = labels == c
        mean = points[mine].mean(0)
        out[mine] = mean + s * (points[mine] - mean)
    return out


@pytest.mark.parametrize("s", [0.0, 0.5, 0.8, 1.0, 1.3])
def test_spread_of_a_shrunken_target_is_the_factor(s):
    target = exact_targets("gaussians", 2000, 0)["map"]
    labels = torch.arange(2000) % 8
    assert math.isclose(spread_ratio(shrunk(target, labels, s), target, labels), s, abs_tol=1e-9)
    # one group: every point pulled towards the overall mean scales the whole set's spread the same way
    whole = torch.zeros(2000, dtype=torch.long)
    assert math.isclose(spread_ratio(shrunk(target, whole, s), target, None), s, abs_tol=1e-9)


def test_spread_by_hand():
    """Two classes, two points each: sum of per-class variances (unbiased, summed over the 2 dimensions)."""
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 7.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [5.0, 6.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # x: class 0 var 2 in x, class 1 var 2 in y -> 4; target: 0.5 + 0.5 -> 1
    assert math.isclose(spread_ratio(x, target, labels), 2.0, rel_tol=1e-12)


def test_references_span_the_bar():
    """The exact map has its own spread, training points about it, samples on their class means none."""
    refs = toy_references("gaussians", 2000, 0, conditional=True)
    assert refs["exact map"]["spread"] == pytest.approx(1.0, abs=1e-12)
    assert 0.93 < refs["data"]["spread"] < 1.07
    assert refs["class means"]["spread"] == 0.0
    assert "spread" not in refs["uniform box"]
    # the prior has no labels: the whole noise set's spread against the whole map's
    noise, target = index_noise(0, range(2000), (2,)).double(), exact_targets("gaussians", 2000, 0)["map"]
    assert refs["prior (u = 0)"]["spread"] == pytest.approx(float(noise.var(0).sum() / target.var(0).sum()) ** 0.5)


def test_scores_of_a_shrunken_map_fall_with_the_factor():
    """point_scores on the exact map shrunk by s: transport = (1 - s)^2 times the map's per-class variance."""
    exact = exact_targets("gaussians", 2000, 0)
    labels = torch.arange(2000) % 8
    from workbench.data import load_data
    reference = load_data("gaussians", "test").x[:2000]
    variance = sum(float(exact["map"][labels == c].double().var(0, unbiased=False).sum()) * int((labels == c).sum())
                   for c in range(8)) / 2000
    for s in (1.0, 0.8, 0.6):
        scores = point_scores(shrunk(exact["map"], labels, s), reference, "gaussians", labels, exact["map"], 0)
        assert scores["spread"] == pytest.approx(s, abs=1e-9)
        assert scores["transport"] == pytest.approx((1 - s) ** 2 * variance, rel=1e-6)


def test_exact_scores_are_the_exact_maps_own_and_move_with_guidance():
    refs = toy_references("gaussians", 2000, 0, conditional=True)
    unguided = exact_scores("gaussians", 2000, 0, 1.0, (0.0, 1.0), True)
    assert unguided["energy_exact"] == refs["exact map"]["energy"]
    assert unguided["precision_exact"] == refs["exact map"]["precision"]
    guided = exact_scores("gaussians", 2000, 0, 3.0, (0.0, 1.0), True)
    assert guided["energy_exact"] > unguided["energy_exact"]  # guidance moves the target away from the data


@pytest.mark.parametrize(("ratio", "t_dist"), [(0.0, "uniform(0,1)"), (1.0, "uniform(0,1)"), (0.25, "lognorm(-0.4,1.0)")])
def test_own_pairs_follow_the_runs_sampler(ratio, t_dist):
    sampler = (("t_dist", t_dist), ("r_dist", ""), ("ratio", ratio), ("ratio_mask", "prefix"), ("tr_sampler", "v0"))
    own = exact_targets("gaussians", 2000, 0, 1.0, (0.0, 1.0), True, sampler)["own"]
    assert float((own["t"] != own["r"]).double().mean()) == pytest.approx(ratio, abs=1e-3)
    assert bool((own["t"] >= own["r"]).all())
    same = own["t"] == own["r"]
    flow = exact_flow("gaussians")
    if same.any():  # r = t rows: the exact average velocity is the instantaneous one
        v = flow.velocity(own["z"][same], own["t"][same], own["labels"][same])
        assert torch.allclose(own["u"][same], v)
    paper = exact_targets("gaussians", 2000, 0)
    assert bool((paper["t"] != paper["r"]).all())  # the paper's pairs: all r != t, unchanged by `sampler`


def test_own_pairs_carry_the_labels_of_their_own_points():
    """Each own pair's z_t is drawn around a point of its label's mode: at small t, z is near that mode."""
    from workbench.data import GAUSSIAN_MEANS

    sampler = (("t_dist", "uniform(0,0.05)"), ("r_dist", ""), ("ratio", 1.0), ("ratio_mask", "random"), ("tr_sampler", "v0"))
    own = exact_targets("gaussians", 500, 0, 1.0, (0.0, 1.0), True, sampler)["own"]
    nearest = torch.cdist(own["z"], GAUSSIAN_MEANS.double()).argmin(1)
    assert float((nearest == own["labels"]).double().mean()) > 0.95


def test_points_outside_a_panel_are_counted():
    from workbench.evaluate.pictures import outside_count

    points = torch.tensor([[0.0, 0.0], [1.0, -1.0], [1.01, 0.0], [0.0, -3.0], [math.nan, 0.0], [math.inf, 0.0]])
    assert outside_count(points, 1.0) == 4
