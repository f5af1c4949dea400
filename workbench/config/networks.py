"""The network sections of a run's config (net.*): the family and each family's options."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, field_validator, model_validator

from workbench.config.fields import F, _Frozen
from workbench.meanflow import NETWORKS, TIME_CONDITIONINGS


class MLPConfig(_Frozen):
    width: int = F(512, "hidden units", ge=1)
    depth: int = F(3, "residual blocks", ge=1)


def _multipliers(values: tuple[int, ...]) -> tuple[int, ...]:
    if not values or any(v < 1 for v in values):
        raise ValueError(f"needs one or more positive integers, got {values}")
    return values


Multipliers = Annotated[tuple[int, ...], AfterValidator(_multipliers)]  # one or more positive integers


class UNetConfig(_Frozen):
    channels: int = F(32, "base channel count", ge=8)
    channel_mult: Multipliers = F((1, 2), "per resolution level; H, W divisible by 2^(levels - 1)")
    blocks: int = F(1, "residual blocks per level", ge=1)
    dropout: float = F(0.0, "dropout rate inside residual blocks", ge=0, lt=1)


class SongUNetConfig(_Frozen):
    """The official CIFAR-10 network of MeanFlow (EDM's DDPM++ SongUNet); the defaults are the official ones."""
    channels: int = F(128, "model_channels: base channel count", ge=8)
    channel_mult: Multipliers = F((2, 2, 2), "per resolution level; H = W divisible by 2^(levels - 1)")
    blocks: int = F(4, "residual blocks per encoder level (decoder: one more)", ge=1)
    attn_resolutions: tuple[int, ...] = F((16,), "resolutions with self-attention (and always the middle block)")
    dropout: float = F(0.2, "dropout before each block's second conv", ge=0, lt=1)

    @field_validator("attn_resolutions")
    @classmethod
    def _resolutions(cls, resolutions: tuple[int, ...]) -> tuple[int, ...]:
        return _multipliers(resolutions) if resolutions else resolutions  # empty: attention in the middle block only


class DiTConfig(_Frozen):
    hidden: int = F(128, "token width", ge=8)
    depth: int = F(4, "transformer blocks", ge=1)
    heads: int = F(4, "attention heads (hidden divisible by heads)", ge=1)
    patch_size: int = F(2, "pixels per patch side", ge=1)
    v_head_blocks: int = F(0, "with net.v_head: the last blocks the v-head repeats with its own weights (the authors' "
                              "iMF DiTs: 8); 0 = its own output layers only", ge=0)


class NetConfig(_Frozen):
    arch: Literal[tuple(NETWORKS)] = F("mlp", "network family")
    time_cond: Literal[tuple(TIME_CONDITIONINGS)] = F("(t,t-r)", "which of t, r, t - r are embedded (Table 1c)")
    v_head: bool = F(False, "a second output head for the instantaneous velocity (iMF: meanflow.imf.tangent=head)")
    mlp: MLPConfig = MLPConfig()
    unet: UNetConfig = UNetConfig()
    songunet: SongUNetConfig = SongUNetConfig()
    dit: DiTConfig = DiTConfig()

    @model_validator(mode="after")
    def _v_head_blocks(self) -> NetConfig:
        if self.dit.v_head_blocks > (self.dit.depth if self.v_head else 0):
            raise ValueError(f"net.dit.v_head_blocks={self.dit.v_head_blocks}: the v-head repeats at most the "
                             f"{self.dit.depth} blocks of net.dit.depth, and only with net.v_head=true")
        return self
