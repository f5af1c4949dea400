"""Exact velocities, flow maps and average velocities for 2D toy data, in closed form (pure torch).

With z_t = (1 - t) x + t e the marginal velocity is v(z, t) = E[e - x | z_t = z]. For a Gaussian
mixture and for a uniform density on squares both posterior means have closed forms, so the flow
map Phi_{t->r} (an ODE solve of dz/ds = v(z, s) from s = t to s = r) and the exact average velocity

    u*(z, r, t) = (z - Phi_{t->r}(z)) / (t - r)        (u* = v(z, t) when r = t)

are known to solver accuracy. A trained network's u_theta is scored against them (workbench/evaluate/evaluators.py).
Everything runs in float64.
"""
from __future__ import annotations

import math

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
T_MIN = 1e-4  # the flow map integrates the ODE down to this time, then takes one Euler step (see flow)


class GaussianMixture:
    """Equal-weight mixture of isotropic Gaussians N(means[k], std^2 I); class label = component."""

    def __init__(self, means: torch.Tensor, std: float):
        self.means, self.std = means.double(), float(std)

    @property
    def num_classes(self) -> int:
        return len(self.means)

    def velocity(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """E[e - x | z_t = z] (labels: given the component, else the posterior over components).

        Per component k, (x, e, z) are jointly Gaussian with Var z = a^2 s^2 + t^2 (a = 1 - t), so
        E[e - x | z, k] = (t - a s^2) / Var z * (z - a m_k) - m_k; the mixture weighs these by the
        posterior p(k | z) proportional to N(z; a m_k, Var z)."""
        a, var = 1 - t[:, None, None], ((1 - t) ** 2 * self.std ** 2 + t ** 2)[:, None, None]
        diff = z[:, None, :] - a * self.means[None]  # (B, K, D)
        per_component = (t[:, None, None] - a * self.std ** 2) / var * diff - self.means[None]
        if labels is not None:
            return per_component[torch.arange(len(z)), labels]
        weights = torch.softmax(-diff.pow(2).sum(-1) / (2 * var[..., 0]), dim=1)  # (B, K)
        return (weights[..., None] * per_component).sum(1)


class UniformSquares:
    """Uniform density on a union of equal-area axis-aligned squares (lower corners, side length).

    Per square S and axis d, e | z, S is a standard normal truncated to the e_d with
    x_d = (z_d - t e_d) / a in [lo_d, hi_d]: bounds A = (a lo_d - z_d) / t, B = (a hi_d - z_d) / t,
    mass Phi(B) - Phi(A) and mean E[e_d | z, S] = (phi(B) - phi(A)) / (Phi(B) - Phi(A)); the squares are
    weighed by their mass (product over axes). Then v = E[e | z] - E[x | z], E[x | z] = (z - t E[e | z]) / a.
    Near t = 1 that division loses digits (a -> 0): there, for a < 1e-3, x | z, S is uniform on the
    square tilted by exp(lam x), lam = a (z - a m) / t^2 (m the square's centre), whose mean is
    m + side^2 lam / 12 + O(a^2), and the mass is proportional to phi at the centre.
    """

    def __init__(self, corners: torch.Tensor, side: float = 1.0):
        self.corners, self.side = corners.double(), float(side)

    @property
    def num_classes(self) -> int:
        return 0

    def velocity(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None:
            raise ValueError("UniformSquares has no classes; call velocity with labels=None")
        a, tt = (1 - t)[:, None, None], t.clamp_min(T_MIN / 100)[:, None, None]
        lo, hi = self.corners[None], self.corners[None] + self.side  # (1, K, D)
        zz = z[:, None, :]
        lower, upper = (a * lo - zz) / tt, (a * hi - zz) / tt  # (B, K, D)
        log_mass = _log_normal_mass(lower, upper)
        mean_e = torch.exp(_log_pdf(upper) - log_mass) - torch.exp(_log_pdf(lower) - log_mass)
        mean_x = (zz - tt * mean_e) / a.clamp_min(1e-300)
        # near t = 1: tilted uniform (see the class docstring)
        centre = lo + self.side / 2
        lam = a * (zz - a * centre) / tt ** 2
        near_one = a < 1e-3
        mean_x = torch.where(near_one, centre + self.side ** 2 * lam / 12, mean_x)
        mean_e = torch.where(near_one, (zz - a * mean_x) / tt, mean_e)
        log_mass = torch.where(near_one, _log_pdf((a * centre - zz) / tt), log_mass)
        weights = torch.softmax(log_mass.sum(-1), dim=1)[..., None]  # (B, K, 1)
        return (weights * (mean_e - mean_x)).sum(1)


def _log_pdf(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x * x - _LOG_SQRT_2PI


def _log_normal_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for lower <= upper, accurate in both tails (mirrored when lower > 0)."""
    flip = lower > 0
    lo, hi = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1((log_lo - log_hi).clamp_max(-1e-300)))


class ExactFlow:
    """The velocity field a MeanFlow model is trained to represent, and its flow map.

    guidance w' = cfg_omega / (1 - cfg_kappa): with labels, inside [t_lo, t_hi] the trained target is
    the fixed point of Eq. 13/19, v~ = w' v(z, t | c) + (1 - w') v(z, t); elsewhere v(z, t | c). Labels
    equal to the data's num_classes (the null class) or None: the unconditional v.
    """

    def __init__(self, data: GaussianMixture | UniformSquares, guidance: float = 1.0,
                 interval: tuple[float, float] = (0.0, 1.0)):
        self.data, self.guidance, self.interval = data, float(guidance), interval

    def velocity(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z, t = z.double(), torch.as_tensor(t, dtype=torch.float64).expand(len(z))
        unconditional = self.data.velocity(z, t)
        if labels is None or not self.data.num_classes:
            return unconditional
        null = labels >= self.data.num_classes
        conditional = self.data.velocity(z, t, labels.clamp_max(self.data.num_classes - 1))
        if self.guidance != 1.0:
            inside = ((t >= self.interval[0]) & (t <= self.interval[1]))[:, None]
            guided = self.guidance * conditional + (1 - self.guidance) * unconditional
            conditional = torch.where(inside, guided, conditional)
        return torch.where(null[:, None], unconditional, conditional)

    def flow(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, labels: torch.Tensor | None = None,
             steps: int = 50) -> torch.Tensor:
        """Phi_{t->r}(z) per sample (t, r of shape (B,) or scalars): classical RK4 with `steps` steps on a
        grid uniform in sqrt(s), which packs the steps near s = 0 where v changes fastest (square edges)."""
        z = z.double()
        t = torch.as_tensor(t, dtype=torch.float64).expand(len(z))
        r = torch.as_tensor(r, dtype=torch.float64).expand(len(z))
        end = torch.maximum(r, torch.minimum(t, torch.full_like(t, T_MIN)))  # RK4 down to T_MIN at most
        root_t, root_end = t.sqrt(), end.sqrt()
        grid = [(root_t + (root_end - root_t) * k / steps) ** 2 for k in range(steps + 1)]
        for s, s_next in zip(grid[:-1], grid[1:]):
            h = (s_next - s)[:, None]
            k1 = self.velocity(z, s, labels)
            k2 = self.velocity(z + h / 2 * k1, s + h[:, 0] / 2, labels)
            k3 = self.velocity(z + h / 2 * k2, s + h[:, 0] / 2, labels)
            k4 = self.velocity(z + h * k3, s_next, labels)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        # Below T_MIN one Euler step; to r = 0 it lands on the posterior mean E[x | z_s] (z_s = (1 - s) E[x | z_s]
        # + s E[e | z_s] exactly), which differs from the ODE's end point by O(T_MIN).
        return z - (end - r)[:, None] * self.velocity(z, end, labels)

    def average_velocity(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                         labels: torch.Tensor | None = None, steps: int = 50) -> torch.Tensor:
        """u*(z, r, t) = (z - Phi_{t->r}(z)) / (t - r); v(z, t) where r = t."""
        z = z.double()
        t = torch.as_tensor(t, dtype=torch.float64).expand(len(z))
        r = torch.as_tensor(r, dtype=torch.float64).expand(len(z))
        same = (t - r) < 1e-9
        span = torch.where(same, torch.ones_like(t), t - r)[:, None]
        u = (z - self.flow(z, t, torch.where(same, t, r), labels, steps)) / span
        return torch.where(same[:, None], self.velocity(z, t, labels), u)
