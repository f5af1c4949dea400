"""Samplers and per-index noise."""
import pytest
import torch

from workbench.data import index_noise
from workbench.meanflow import sample, time_schedule


class Recorder(torch.nn.Module):
    """u = a constant c; records the (t, r) of every call."""

    def __init__(self, c):
        super().__init__()
        self.c, self.calls = c, []

    def forward(self, z, t, r, labels=None):
        self.calls.append((t.clone(), r.clone()))
        return self.c.expand_as(z)


def test_index_noise_depends_only_on_seed_and_index():
    full = index_noise(3, range(10), (2, 4))
    assert torch.equal(index_noise(3, [5, 6], (2, 4)), full[5:7])
    assert not torch.equal(index_noise(4, [5], (2, 4))[0], full[5])


def test_one_nfe_is_e_minus_u_at_r0_t1():
    e = torch.randn(5, 2)
    net = Recorder(torch.tensor([0.5, -1.0]))
    x = sample(net, e, 1)
    assert torch.allclose(x, e - torch.tensor([0.5, -1.0]))
    (t, r), = net.calls
    assert bool((t == 1).all()) and bool((r == 0).all())


def test_k_nfe_follows_the_schedule():
    e = torch.randn(5, 2)
    net = Recorder(torch.tensor([1.0, 2.0]))
    x = sample(net, e, [1.0, 0.6, 0.0])
    # Steps of length 0.4 and 0.6 with constant u: total displacement = u.
    assert torch.allclose(x, e - torch.tensor([1.0, 2.0]))
    assert [float(v[0]) for call in net.calls for v in call] == pytest.approx([1.0, 0.6, 0.6, 0.0])


def test_euler_uses_instantaneous_velocity():
    net = Recorder(torch.tensor([1.0, 0.0]))
    sample(net, torch.randn(3, 2), 4, euler=True)
    assert len(net.calls) == 4
    assert all(torch.equal(t, r) for t, r in net.calls)
    assert [float(t[0]) for t, _ in net.calls] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_schedule_validation():
    assert torch.allclose(time_schedule(2), torch.tensor([1.0, 0.5, 0.0]))
    assert torch.equal(time_schedule([1.0, 0.7, 0.0]), torch.tensor([1.0, 0.7, 0.0]))
    for bad in ([1.0, 0.5], [0.9, 0.0], [1.0, 0.5, 0.6, 0.0], [1.0, 0.5, 0.5, 0.0]):
        with pytest.raises(ValueError, match=rf"schedule \[{', '.join(map(str, bad))}\] must decrease strictly from 1 to 0"):
            time_schedule(bad)


def gaussian_net():
    """The exact average velocity of Gaussian data (tests/test_closed_form.py), as a network."""
    from test_closed_form import Exact

    return Exact()


@pytest.mark.parametrize("steps", [1, 2, 3, 7, [1.0, 0.9, 0.3, 0.05, 0.0], [1.0, 0.02, 0.0]])
def test_k_step_sampling_with_the_exact_average_velocity_is_the_exact_flow_map(steps):
    """Every schedule composes exact maps Phi_{t->r}: the result is Phi_{1->0}(e) = mu + s e to rounding. A sampler
    that evaluated u anywhere but at the current z_t (at the starting noise, say) would miss by O(1)."""
    from test_closed_form import MU, S

    e = index_noise(0, range(64), (2,)).double()
    x = sample(gaussian_net(), e, steps)
    torch.testing.assert_close(x, MU + S * e, rtol=0, atol=1e-9)


def test_euler_on_the_exact_instantaneous_velocity_is_first_order():
    """Flow Matching's Euler baseline (u(z, t, t) = the marginal velocity) has error O(1/N): doubling the steps
    halves it, and it vanishes only in the limit."""
    from test_closed_form import MU, S

    e = index_noise(0, range(64), (2,)).double()
    exact = MU + S * e
    errors = [float((sample(gaussian_net(), e, n, euler=True) - exact).abs().max()) for n in (8, 16, 32, 64)]
    assert errors[0] > 1e-3
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.8 < coarse / fine < 2.2, errors
