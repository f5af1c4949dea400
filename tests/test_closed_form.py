"""Gaussian data: the flow to Gaussian noise is affine, so the average velocity is known exactly.

x ~ N(mu, s^2 I), e ~ N(0, I): z_t ~ N(m_t, sig_t^2) with m_t = (1 - t) mu, sig_t^2 = (1 - t)^2 s^2 + t^2.
The probability-flow map is the monotone affine map z_r = m_r + (sig_r / sig_t)(z_t - m_t), so
u(z_t, r, t) = (z_t - z_r) / (t - r), and the marginal velocity is v(z, t) = d/dt of that map.
"""
import torch

from workbench.config import RunConfig, with_overrides
from workbench.data import index_noise
from workbench.meanflow import meanflow_loss, sample, sample_t_r

from conftest import mf, small_net

MU, S = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.5


def stats(t):
    t = t[:, None]
    return (1 - t) * MU, torch.sqrt((1 - t) ** 2 * S**2 + t**2)


def average_velocity(z, t, r):
    (m_t, s_t), (m_r, s_r) = stats(t), stats(r)
    z_r = m_r + s_r / s_t * (z - m_t)
    gap = (t - r)[:, None]
    # r = t: the limit is the marginal velocity.
    return torch.where(gap > 0, (z - z_r) / gap.clamp_min(1e-12), marginal_velocity(z, t))


def marginal_velocity(z, t):
    m_t, s_t = stats(t)
    tb = t[:, None]
    dm, ds = -MU, ((1 - tb) * -(S**2) + tb) / s_t  # d/dt m_t and sig_t
    return dm + ds / s_t * (z - m_t)


class Exact(torch.nn.Module):
    num_classes = 0

    def forward(self, z, t, r, labels=None):
        return average_velocity(z, t, r)


def test_exact_average_velocity_makes_the_meanflow_target_exact():
    """Choose (x, e) so that e - x is the marginal velocity at z_t: then u_tgt = u exactly (Eq. 6)."""
    g = torch.Generator().manual_seed(0)
    t, r = sample_t_r(256, mf(t_dist="uniform(0,1)", ratio=1.0), g)
    t, r = t.double().clamp(0.01, 0.99), r.double().clamp(0.0, 0.98)
    r = torch.minimum(r, t - 0.01)
    z = torch.randn(256, 2, dtype=torch.float64, generator=g) * 1.3 + 0.2
    v = marginal_velocity(z, t)
    x, e = z - t[:, None] * v, z + (1 - t[:, None]) * v
    loss, _ = meanflow_loss(Exact(), x, t, r, e, mf(adaptive_p=0.0))
    assert loss < 1e-16
    # The same check fails for a wrong tangent or swapped (r, t): the test can tell them apart.
    wrong, _ = meanflow_loss(Exact(), x, t, r, e, mf(adaptive_p=0.0, tangent="(v,1,0)"))
    assert wrong > 1e-3
    swapped, _ = meanflow_loss(lambda z_, t_, r_, labels=None: average_velocity(z_, r_.clamp(max=t_), t_), x, t, r, e,
                               mf(adaptive_p=0.0))
    assert swapped > 1e-3


def test_trained_mlp_matches_closed_form():
    torch.manual_seed(0)
    config = with_overrides(RunConfig(), {"meanflow.ratio": 0.5, "meanflow.t_dist": "uniform(0,1)",
                                          "meanflow.adaptive_p": 0.0})
    net = small_net("mlp", dtype=torch.float32, width=64, depth=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 1000)
    g = torch.Generator().manual_seed(0)
    for _ in range(1000):
        x = MU.float() + S * torch.randn(256, 2, generator=g)
        t, r = sample_t_r(256, config.meanflow, g)
        loss, _ = meanflow_loss(net, x, t, r, torch.randn(256, 2, generator=g), config.meanflow)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    samples = sample(net, index_noise(0, range(4000), (2,)), 1).double()
    # Tolerance: 0.1 on the mean and std (data scale 0.5 to 1.5); the untrained net is off by about 1.
    assert torch.allclose(samples.mean(0), MU, atol=0.1), samples.mean(0)
    assert torch.allclose(samples.std(0), torch.full((2,), S, dtype=torch.float64), atol=0.1), samples.std(0)
    # u on z_t drawn from its marginal, where the net was trained.
    t = torch.rand(2048, dtype=torch.float64)
    r = t * torch.rand(2048, dtype=torch.float64)
    m_t, s_t = stats(t)
    z = m_t + s_t * torch.randn(2048, 2, dtype=torch.float64)
    with torch.no_grad():
        u = net(z.float(), t.float(), r.float()).double()
    exact = average_velocity(z, t, r)
    relative_error = (u - exact).norm(dim=1).mean() / exact.norm(dim=1).mean()
    assert relative_error < 0.1, relative_error
