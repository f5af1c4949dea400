"""Option sections of the objectives that followed MeanFlow (workbench/meanflow/objectives.py), each under
meanflow.<objective>: set only with meanflow.objective naming it (the config refuses options with no effect)."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from workbench.config.fields import F, _Frozen


class AlphaFlowConfig(_Frozen):
    """alpha-Flow (arXiv 2510.20771; snap-research/alphaflow, configs in infra/experiments/experiments-alphaflow.yaml):
    alpha goes from 1 (trajectory flow matching) to 0 (the MeanFlow target) by a sigmoid over a window of steps.
    Its flow-matching fraction is 1 - meanflow.ratio (the rows with r = t)."""
    start: int = F(0, "first step of the alpha curriculum (alpha = 1 before it)", ge=0)
    end: int = F(0, "step from which alpha = 0, the MeanFlow target (start = end = 0: alpha = 0 throughout); the "
                    "authors' ImageNet runs: 0 to the last step (B/2), 600k to 1M of 1.2M (XL/2)", ge=0)
    gamma: float = F(25.0, "steepness of the sigmoid over the window (the authors' 25)", gt=0)
    clamp: float = F(0.0, "clip u_tgt to [-clamp, clamp] on the alpha > 0 rows (the authors' XL/2: 4); 0 = off", ge=0)

    @model_validator(mode="after")
    def _window(self) -> AlphaFlowConfig:
        if self.start > self.end:
            raise ValueError(f"alphaflow.start={self.start} must be <= alphaflow.end={self.end}")
        return self


class IMFConfig(_Frozen):
    """Improved MeanFlow (arXiv 2512.02012; Lyy-iiis/imeanflow imf.py): the loss on the compound velocity with the
    network's own velocity as the JVP's z-tangent, and guidance either trained in at one scale (cfg_omega, the
    MeanFlow way) or fed to the network as inputs drawn per example and chosen at sampling time (eval.omega,
    eval.interval)."""
    tangent: Literal["boundary", "head", "v"] = F(
        "boundary", "the JVP's z-tangent, the network's own conditional velocity (no gradient): boundary = u(z, t, t | c), "
                    "head = its v-head at (z, t, t | c) (net.v_head=true), or v = e - x (MeanFlow's)")
    v_loss: float = F(0.0, "weight of the auxiliary loss w(||v - sg(v~)||^2), v the v-head at (z, t, r | c) (the "
                           "boundary u(z, t, t | c) without one); 0 = off; the authors' 1", ge=0)
    guidance: Literal["fixed", "omega", "interval"] = F(
        "fixed", "fixed = guidance trained in at meanflow.cfg_omega on [cfg_t_lo, cfg_t_hi]; omega = the scale drawn per "
                 "example, omega = exp(U ln omega_max), and fed to the network, chosen at sampling time (eval.omega); "
                 "interval = the guidance interval too, t_min ~ U[0, 0.5], t_max ~ U[0.5, 1] ([0, 1] on the r = t rows), "
                 "chosen at sampling time (eval.interval): the authors' training")
    omega_max: float = F(8.0, "largest drawn guidance scale (the authors' 1 + s_max = 8); density of omega ~ 1/omega",
                         gt=1)


class CurriculumConfig(_Frozen):
    """The short-to-long interval weighting of "Understanding, Accelerating, and Improving MeanFlow Training" (arXiv
    2511.19065; no public code: from the paper's formula): the MeanFlow loss of a sample with interval dt = t - r
    weighted 1 - s + lambda s (1 - dt), s = 1 - (step / steps)^power, lambda = 1 / E[1 - dt] (over the batch)."""
    steps: int = F(0, "steps over which the weighting moves from short intervals (s = 1) to uniform (s = 0); 0 = off",
                   ge=0)
    power: float = F(1.0, "k in s = 1 - (step / steps)^k (the paper's 1)", gt=0)


OBJECTIVE_SECTIONS = {"alphaflow": AlphaFlowConfig, "imf": IMFConfig, "curriculum": CurriculumConfig}  # meanflow.<name>
