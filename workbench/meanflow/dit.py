"""DiT (Peebles & Xie) with adaLN-Zero blocks, as the official MeanFlow code builds and initialises it
(Gsunshine/meanflow `models/models_dit.py`): fixed 2-D sin-cos patch positions, one 256-frequency
sinusoidal + MLP embedder per time scalar (t and t - r) with N(0, 0.02) weights, an N(0, 0.02) label
embedding with a null class, xavier-uniform attention, MLP and patch projections with zero biases, and
zero adaLN modulations and output layer. DiT-B/4 on 32x32x4 latents with 1000 classes has 131,165,248
parameters, the official count (tests/test_networks.py).

The fused scaled_dot_product_attention kernels have no forward-mode AD, so attention here is the
plain matmul-softmax form.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .conditioning import Conditioning, output_head


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def sincos_positions(dim: int, height: int, width: int) -> torch.Tensor:
    """(height * width, dim) fixed 2-D sin-cos positions (MAE's get_2d_sincos_pos_embed, row-major patches):
    the first half encodes the column, the second the row, each as [sin, cos] of 10000^(-2i/(dim/2))."""
    def axis(positions: torch.Tensor, d: int) -> torch.Tensor:
        omega = 1.0 / 10_000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = positions.double().reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.cat([axis(cols, dim // 2), axis(rows, dim // 2)], dim=1).float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN[-1].weight)
        nn.init.zeros_(self.adaLN[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


def _init_block(block: DiTBlock) -> DiTBlock:
    """The official initialisation of a block's attention and MLP (models_dit.py DiTLinear: xavier, zero bias)."""
    for layer in (block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return block


class DiT(nn.Module):
    """u(z, t, r, labels) for z of shape (B, C, H, W), H and W divisible by patch_size."""

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int,
        time_cond: str,
        *,
        hidden: int,
        depth: int,
        heads: int,
        patch_size: int,
        v_head: bool = False,
        v_head_blocks: int = 0,
        guidance_cond: bool = False,
    ):
        super().__init__()
        c_img, height, width = data_shape
        if height % patch_size or width % patch_size or hidden % heads:
            raise ValueError(f"DiT: {height}x{width} not divisible by patch {patch_size}, or hidden {hidden} by heads {heads}")
        if v_head_blocks > (depth if v_head else 0):
            raise ValueError(f"v_head_blocks={v_head_blocks}: the v-head repeats at most the depth's {depth} blocks, and "
                             "only with v_head=True")
        self.num_classes, self.patch, self.data_shape = num_classes, patch_size, data_shape
        self.cond = Conditioning(hidden, time_cond, num_classes, freq_dim=256, guidance_cond=guidance_cond)
        self.patchify = nn.Conv2d(c_img, hidden, patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_positions(hidden, height // patch_size, width // patch_size)[None],
                             persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.final = nn.Linear(hidden, patch_size * patch_size * c_img)
        self._official_init()
        # iMF's auxiliary v-head (head="v"): the final modulation and projection again and, with v_head_blocks, the
        # last blocks with their own weights (the authors' iMF DiTs repeat the last 8), initialised as the others
        self.v_out = nn.ModuleList([copy.deepcopy(self.final_adaLN), copy.deepcopy(self.final)]) if v_head else None
        self.v_blocks = nn.ModuleList(_init_block(DiTBlock(hidden, heads)) for _ in range(v_head_blocks))

    def _official_init(self) -> None:
        """The official initialisation (models_dit.py: DiTLinear, TimestepEmbedder, LabelEmbedder, PatchEmbed)."""
        for block in self.blocks:
            _init_block(block)
        for embedder in (*self.cond.embedders, *(self.cond.guidance_embedders or ())):
            for layer in (embedder.mlp[0], embedder.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        if self.cond.label_embedding is not None:
            nn.init.normal_(self.cond.label_embedding.weight, std=0.02)
        # the patch projection as a linear map of each flattened patch: fan_in = C p^2, fan_out = hidden
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.weight.shape[0], -1))
        nn.init.zeros_(self.patchify.bias)
        for layer in (self.final_adaLN[-1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, labels: torch.Tensor | None = None,
                head: str = "u", guidance: torch.Tensor | None = None) -> torch.Tensor:
        c = self.cond(t, r, labels, guidance)
        x = self.patchify(z).flatten(2).transpose(1, 2) + self.pos
        own = len(self.v_blocks) if head == "v" else 0   # the v-head's own last blocks in place of the shared ones
        for block in [*self.blocks[:len(self.blocks) - own], *self.v_blocks[:own]]:
            x = block(x, c)
        adaLN, final = (self.final_adaLN, self.final) if head == "u" else output_head(None, self.v_out, head)
        shift, scale = adaLN(c).chunk(2, dim=1)
        x = final(_modulate(self.final_norm(x), shift, scale))
        return self._unpatchify(x)

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.data_shape
        p = self.patch
        x = x.view(x.shape[0], h // p, w // p, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, h, w)
