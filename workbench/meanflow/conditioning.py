"""How a network sees (t, r) and the class label (Table 1c). Every network uses this module."""
from __future__ import annotations

import functools
import math
import operator

import torch
from torch import nn

# Which scalars of (t, r) the network is given; each gets its own sinusoidal + MLP embedder.
TIME_CONDITIONINGS = {
    "(t,r)": lambda t, r: (t, r),
    "(t,t-r)": lambda t, r: (t, t - r),
    "(t,r,t-r)": lambda t, r: (t, r, t - r),
    "t-r": lambda t, r: (t - r,),
}


def frequencies(dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """dim // 2 frequencies of the sinusoidal features, 1 down to 1/max_period."""
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)


def sinusoidal(s: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """(B,) scalars in [0, 1] -> (B, 2 * len(freqs)) features [cos(s f), sin(s f)].

    No x1000 scaling as in DiT's step embedding: d/dt u enters the target multiplied by (t - r), and
    with 1000 t the embedding's derivative is up to 1000x larger. Measured on checkerboard (MLP 3x256,
    3000 steps): 1-NFE energy distance 0.12 with the x1000 scale, 0.009 without; on Gaussian data the
    x1000 scale made training diverge (loss 1e5).
    """
    args = s[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbedder(nn.Module):
    """Embeds one time scalar: sinusoidal features -> Linear -> SiLU -> Linear (DiT's TimestepEmbedder).

    The frequencies are a (non-saved) buffer, so they follow .to(device, dtype) and the JVP can
    give them a tangent (see meanflow.jvp.time_derivative)."""

    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.register_buffer("freqs", frequencies(freq_dim), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(s, self.freqs))


def guidance_scalars(guidance: torch.Tensor | None, t: torch.Tensor, built: bool) -> tuple[torch.Tensor, ...]:
    """iMF's guidance inputs (B, 3) rows (omega, t_min, t_max) -> the three scalars a network embeds:
    1 - 1/omega (the authors' omega_embedder input, 0 without guidance), t_min, t_max. None: no guidance
    (omega 1 on [0, 1]). `built`: whether the network has the embedders (built with guidance_cond=True)."""
    if not built:
        if guidance is not None:
            raise ValueError("guidance inputs given to a network built without them (meanflow.imf.guidance='fixed')")
        return ()
    if guidance is None:
        zeros = torch.zeros_like(t)
        return zeros, zeros, torch.ones_like(t)
    return 1 - 1 / guidance[:, 0], guidance[:, 1], guidance[:, 2]


class Conditioning(nn.Module):
    """(t, r, labels, guidance) -> (B, dim): sum of per-scalar time embeddings, the label embedding and, for a
    network built with guidance_cond=True (iMF's omega / interval conditioning), one embedding per guidance scalar.

    Labels are integers in [0, num_classes]; num_classes itself is the null class (classifier-free
    guidance), and labels=None means null for every sample. guidance: (B, 3) rows (omega, t_min, t_max), None
    for none (omega 1 on [0, 1]).
    """

    def __init__(self, dim: int, time_cond: str, num_classes: int, freq_dim: int = 128, guidance_cond: bool = False):
        super().__init__()
        if time_cond not in TIME_CONDITIONINGS:
            raise ValueError(f"time_cond {time_cond!r} not in {sorted(TIME_CONDITIONINGS)}")
        self.select = TIME_CONDITIONINGS[time_cond]
        n_scalars = len(self.select(torch.zeros(1), torch.zeros(1)))
        self.embedders = nn.ModuleList(ScalarEmbedder(dim, freq_dim) for _ in range(n_scalars))
        self.num_classes = num_classes
        self.label_embedding = nn.Embedding(num_classes + 1, dim) if num_classes else None
        # omega (as 1 - 1/omega), t_min, t_max: the authors' omega, cfg_t_start and cfg_t_end embedders
        self.guidance_embedders = nn.ModuleList(ScalarEmbedder(dim, freq_dim) for _ in range(3)) if guidance_cond else None

    def forward(self, t: torch.Tensor, r: torch.Tensor, labels: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        # reduce, not sum(): sum() starts from 0, an extra whole-batch add (and a slow one for a dual tensor)
        c = functools.reduce(operator.add, (embed(s) for embed, s in zip(self.embedders, self.select(t, r))))
        if self.label_embedding is not None:
            if labels is None:
                labels = torch.full(t.shape, self.num_classes, dtype=torch.long, device=t.device)
            c = c + self.label_embedding(labels)
        for embed, s in zip(self.guidance_embedders or (), guidance_scalars(guidance, t, self.guidance_embedders is not None)):
            c = c + embed(s.to(t.dtype))
        return c


def output_head(u_head: nn.Module | None, v_head: nn.Module | None, head: str) -> nn.Module:
    """The output layers for `head`: "u" (the average velocity, every network's) or "v" (iMF's auxiliary
    instantaneous-velocity head, where the network was built with v_head=True)."""
    if head == "u":
        return u_head
    if head != "v":
        raise ValueError(f"head={head!r}: the networks have heads 'u' and 'v'")
    if v_head is None:
        raise ValueError("head='v' needs a network built with a v-head (net.v_head=true)")
    return v_head
