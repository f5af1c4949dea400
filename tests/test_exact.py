"""Exact references of the 2D sets: velocity against Monte Carlo, flow maps against closed forms and
a fine Euler solve, the exact one-step map against the data itself."""
import math

import numpy as np
import pytest
import torch

from workbench.data import CHECKER_CORNERS, GAUSSIAN_MEANS, GAUSSIAN_STD, exact_flow, load_data, support_cells
from workbench.evaluate.toy import energy_distance
from workbench.meanflow.exact import ExactFlow, GaussianMixture, UniformSquares


def monte_carlo_velocity(x: torch.Tensor, z: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """E[e - x | z_t = z] by weighting data points x with p(z | x) = N(z; (1 - t) x, t^2 I); and its
    standard error (effective sample size of the weights)."""
    log_w = -((z[:, None] - (1 - t) * x[None]) ** 2).sum(-1) / (2 * t * t)
    w = torch.softmax(log_w, dim=1)
    mean_x = w @ x
    v = (z - (1 - t) * mean_x) / t - mean_x  # E[e | z] = (z - (1 - t) E[x | z]) / t
    spread = (w[..., None] * (x[None] - mean_x[:, None]) ** 2).sum(1).sqrt() / t  # sd of v given z
    ess = 1 / (w ** 2).sum(1, keepdim=True)
    return v, spread / ess.sqrt()


@pytest.mark.parametrize("name", ["checkerboard", "gaussians"])
@pytest.mark.parametrize("t", [0.1, 0.4, 0.8, 0.97])
def test_velocity_matches_monte_carlo(name, t):
    x = load_data(name, "train").x.double()
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(len(x), (64,), generator=g)
    z = (1 - t) * x[pick] + t * torch.randn(64, 2, generator=g, dtype=torch.float64)  # where z_t lives
    mc, stderr = monte_carlo_velocity(x, z, t)
    tt = torch.full((64,), t, dtype=torch.float64)
    # the densities built here, from the data's constants (data.py builds its own once, at import)
    density = UniformSquares(CHECKER_CORNERS) if name == "checkerboard" else GaussianMixture(GAUSSIAN_MEANS, GAUSSIAN_STD)
    exact = ExactFlow(density).velocity(z, tt)
    assert bool(((exact - mc).abs() <= 5 * stderr + 1e-3).all()), float((exact - mc).abs().max())
    assert torch.equal(exact, exact_flow(name).velocity(z, tt))


def test_single_gaussian_flow_is_the_closed_form_affine_map():
    """x ~ N(m, s^2 I): z_t ~ N((1 - t) m, sigma_t^2 I) with sigma_t^2 = (1 - t)^2 s^2 + t^2, and the flow
    is affine, Phi_{t->r}(z) = (1 - r) m + sigma_r / sigma_t (z - (1 - t) m)."""
    m, s = torch.tensor([[0.7, -1.3]], dtype=torch.float64), 0.3
    flow = ExactFlow(GaussianMixture(m, s))
    g = torch.Generator().manual_seed(1)
    z = torch.randn(200, 2, generator=g, dtype=torch.float64)
    t = torch.rand(200, generator=g, dtype=torch.float64)
    r = t * torch.rand(200, generator=g, dtype=torch.float64)
    sigma = lambda u: ((1 - u) ** 2 * s * s + u * u).sqrt()[:, None]
    expected = (1 - r[:, None]) * m + sigma(r) / sigma(t) * (z - (1 - t[:, None]) * m)
    assert torch.allclose(flow.flow(z, t, r), expected, atol=1e-6)
    u_expected = (z - expected) / (t - r)[:, None]
    assert torch.allclose(flow.average_velocity(z, t, r), u_expected, atol=1e-5)



def test_labelled_flow_of_a_mixture_is_its_components_affine_map():
    """With labels the field is the component's own: the flow, the average velocity and v itself match the
    single Gaussian's closed forms (times given as Python floats, as the evaluation's one-step map gives them)."""
    means, s = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.5, -2.0]], dtype=torch.float64), 0.3
    flow = ExactFlow(GaussianMixture(means, s))
    z = torch.randn(30, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    labels = torch.arange(30) % 3
    m = means[labels]
    sigma = lambda u: ((1 - u) ** 2 * s * s + u * u) ** 0.5
    affine = lambda t, r: (1 - r) * m + sigma(r) / sigma(t) * (z - (1 - t) * m)
    # RK4 on 400 steps is exact to ~1e-12 here; a time rounded to float32 moves the map by ~1e-8
    torch.testing.assert_close(flow.flow(z, 0.7, 0.3, labels, steps=400), affine(0.7, 0.3), rtol=0, atol=1e-11)
    torch.testing.assert_close(flow.average_velocity(z, 0.7, 0.3, labels, steps=400),
                               (z - affine(0.7, 0.3)) / 0.4, rtol=0, atol=1e-10)
    # to r = 0 the last step below T_MIN is one Euler step: error ~5e-8
    torch.testing.assert_close(flow.flow(z, 0.9, 0.0, labels), affine(0.9, 0.0), rtol=0, atol=1e-7)
    v = -m + (0.7 - 0.3 * s * s) / sigma(0.7) ** 2 * (z - 0.3 * m)  # d/dt of the affine map along it
    torch.testing.assert_close(flow.velocity(z, 0.7, labels), v, rtol=0, atol=1e-13)
    torch.testing.assert_close(flow.average_velocity(z, 0.7, 0.7, labels), v, rtol=0, atol=1e-13)


def test_average_velocity_is_the_flow_map_with_the_same_steps():
    flow = exact_flow("checkerboard")
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    t, r = torch.full((8,), 0.8, dtype=torch.float64), torch.full((8,), 0.1, dtype=torch.float64)
    for steps in ({}, {"steps": 7}):  # the default, and steps passed through
        assert torch.equal(flow.average_velocity(z, t, r, **steps), (z - flow.flow(z, t, r, **steps)) / (t - r)[:, None])
    assert torch.equal(flow.flow(z, t, r), flow.flow(z, t, r, steps=50))  # the recorded uerr used 50 steps


def squares_velocity_by_quadrature(corners: np.ndarray, side: float, z: np.ndarray, t: float) -> np.ndarray:
    """E[e - x | z_t = z] for x uniform on the squares by 64 x 64-point Gauss-Legendre quadrature over each square:
    p(x | z) is proportional to N(z; (1 - t) x, t^2 I) there, and E[e | z] = (z - (1 - t) E[x | z]) / t."""
    nodes, weights = np.polynomial.legendre.leggauss(64)
    a, out = 1 - t, []
    for point in z:
        mass, first = 0.0, np.zeros(2)
        for corner in corners:
            xs, ys = np.meshgrid(*(corner[d] + side * (nodes + 1) / 2 for d in range(2)), indexing="ij")
            p = np.outer(weights, weights) * np.exp(-((point[0] - a * xs) ** 2 + (point[1] - a * ys) ** 2) / (2 * t * t))
            mass, first = mass + p.sum(), first + [(p * xs).sum(), (p * ys).sum()]
        mean_x = first / mass
        out.append((point - a * mean_x) / t - mean_x)
    return np.array(out)


@pytest.mark.parametrize("corners,side", [([[1.0, -0.5]], 2.0), ([[1.0, -0.5], [-2.0, 0.0]], 1.0)])
@pytest.mark.parametrize("a", [2e-4, 5e-4, 2e-3, 0.3])
def test_squares_velocity_matches_quadrature_on_both_sides_of_the_near_one_branch(corners, side, a):
    """1 - t < 1e-3 takes the tilted-uniform expansion (exact to ~2e-10 at 1 - t = 5e-4 against quadrature),
    above it the truncated normals (~3e-10 at 2e-3, where the division by 1 - t costs digits)."""
    z = 1.5 * torch.randn(16, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = UniformSquares(torch.tensor(corners), side).velocity(z, torch.full((16,), 1 - a, dtype=torch.float64))
    expected = squares_velocity_by_quadrature(np.array(corners), side, z.numpy(), 1 - a)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-9)

@pytest.mark.parametrize("name", ["checkerboard", "gaussians"])
def test_average_velocity_matches_a_fine_euler_solve(name):
    flow = exact_flow(name)
    g = torch.Generator().manual_seed(2)
    z = 1.5 * torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = 0.2 + 0.8 * torch.rand(16, generator=g, dtype=torch.float64)
    r = t * torch.rand(16, generator=g, dtype=torch.float64)
    steps = 20_000
    euler = z.clone()
    for k in range(steps):  # per-sample uniform Euler steps from t to r
        s = t + (r - t) * k / steps
        euler = euler + ((r - t) / steps)[:, None] * flow.velocity(euler, s)
    u_euler = (z - euler) / (t - r)[:, None]
    assert torch.allclose(flow.average_velocity(z, t, r), u_euler, atol=2e-3)


def test_average_velocity_at_r_equal_t_is_the_velocity():
    flow = exact_flow("checkerboard")
    z = torch.randn(8, 2, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 8, dtype=torch.float64)
    assert torch.allclose(flow.average_velocity(z, t, t), flow.velocity(z, t))


def test_checkerboard_velocity_is_continuous_where_the_near_one_branch_starts():
    """For 1 - t < 1e-3 the posterior mean uses the tilted-uniform expansion; both sides must agree."""
    flow = exact_flow("checkerboard")
    z = 1.5 * torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    below, above = (torch.full((32,), 1 - 1e-3 * f, dtype=torch.float64) for f in (0.999, 1.001))
    assert torch.allclose(flow.velocity(z, below), flow.velocity(z, above), atol=1e-5)
    at_one = flow.velocity(z, torch.ones(32, dtype=torch.float64))
    assert torch.allclose(at_one, z, atol=1e-9)  # v(z, 1) = E[e | z] - E[x] = z - 0 (the board is centred)


@pytest.mark.parametrize("name", ["checkerboard", "gaussians"])
def test_exact_one_step_map_pushes_noise_onto_the_data(name):
    n = 2000
    data, held_out = load_data(name, "train"), load_data(name, "test").x[:n]
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mapped = exact_flow(name).flow(noise, 1.0, 0.0).float()
    floors = [energy_distance(data.x[i * n:(i + 1) * n], held_out) for i in range(5)]  # data vs data
    assert energy_distance(mapped, held_out) < 2 * max(floors)
    cells = support_cells(name, mapped)
    assert (cells >= 0).double().mean() >= (0.999 if name == "checkerboard" else 0.985)
    counts = torch.bincount(cells[cells >= 0], minlength=8).double()
    assert counts.min() > 0.8 * n / 8  # every square / mode gets its share


def test_class_conditional_map_lands_on_its_own_gaussian_with_its_spread():
    n = 4000
    labels = torch.arange(n) % 8
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mapped = exact_flow("gaussians").flow(noise, 1.0, 0.0, labels)
    residual = mapped - GAUSSIAN_MEANS[labels]
    assert residual.mean(0).abs().max() < 0.01
    assert torch.allclose(residual.std(0), torch.full((2,), GAUSSIAN_STD, dtype=torch.float64), rtol=0.05)


def test_guidance_one_is_the_conditional_field_and_the_null_class_the_unconditional_one():
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = torch.full((16,), 0.6, dtype=torch.float64)
    labels = torch.arange(16) % 8
    mixture = GaussianMixture(GAUSSIAN_MEANS, GAUSSIAN_STD)
    plain, guided = ExactFlow(mixture), ExactFlow(mixture, guidance=3.0, interval=(0.0, 0.5))
    conditional, unconditional = mixture.velocity(z, t, labels), mixture.velocity(z, t)
    assert torch.allclose(plain.velocity(z, t, labels), conditional)
    assert torch.allclose(plain.velocity(z, t, torch.full_like(labels, 8)), unconditional)
    assert torch.allclose(guided.velocity(z, t, labels), conditional)  # t = 0.6 is outside [0, 0.5]
    inside = torch.full((16,), 0.3, dtype=torch.float64)
    expected = 3.0 * mixture.velocity(z, inside, labels) - 2.0 * mixture.velocity(z, inside)
    assert torch.allclose(guided.velocity(z, inside, labels), expected)
    narrow = ExactFlow(mixture, guidance=3.0, interval=(0.3, 0.5))
    for end in (0.3, 0.5):  # the interval holds its ends
        at = torch.full((16,), end, dtype=torch.float64)
        expected = 3.0 * mixture.velocity(z, at, labels) - 2.0 * mixture.velocity(z, at)
        assert torch.allclose(narrow.velocity(z, at, labels), expected)


def test_support_cells_of_the_checkerboard_squares():
    points = torch.tensor([[-1.5, -1.5], [-0.5, -1.5], [0.5, 0.5], [1.5, 1.5], [2.5, 0.0], [-1.5, 1.5]])
    cells = support_cells("checkerboard", points)
    corners = CHECKER_CORNERS.tolist()
    assert cells.tolist() == [corners.index([-2, -2]), -1, corners.index([0, 0]), corners.index([1, 1]), -1, -1]
    assert math.isclose(float((support_cells("checkerboard", load_data("checkerboard", "test").x) >= 0).double().mean()), 1.0)


def test_the_squares_have_no_classes():
    with pytest.raises(ValueError) as error:
        UniformSquares(CHECKER_CORNERS).velocity(torch.zeros(1, 2), torch.full((1,), 0.5), torch.zeros(1, dtype=torch.long))
    assert str(error.value) == "UniformSquares has no classes; call velocity with labels=None"
