"""A run's EMAs of the weights: the one it samples and ranks (train.ema_decay) and the extra rates
(train.ema_decays), updated every train.ema_every steps, and their scores under their own metric names."""
from __future__ import annotations

from typing import Protocol

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from workbench.config import RunConfig


class Scorer(Protocol):
    """What scores a run's networks (workbench/evaluate/evaluators.py builds them): (network, samples) ->
    metrics, and `info`: what the scores are measured with, written beside them in eval.json."""

    info: dict

    def __call__(self, net: nn.Module, num_samples: int) -> dict[str, float]: ...


def ema_model(net: nn.Module, decay: float) -> AveragedModel:
    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def ema_suffix(decay: float) -> str:
    """The metric-name suffix of an extra EMA rate: 'ema0.99995' (fid_1nfe_ema0.99995)."""
    return f"ema{decay:g}"


def ema_models(net: nn.Module, config: RunConfig) -> dict[str, AveragedModel]:
    """The run's EMAs: '' (train.ema_decay, the one sampled and ranked) first, then one per train.ema_decays.
    Updated every train.ema_every steps with rate^ema_every (the official code's period-16 update)."""
    every = config.train.ema_every
    rates = {"": config.train.ema_decay} | {ema_suffix(d): d for d in config.train.ema_decays}
    return {name: ema_model(net, rate ** every) for name, rate in rates.items()}


def kept_weights(config: RunConfig) -> list[str]:
    """Which weights a run of config scores: '' (train.ema_decay), each extra EMA, and 'raw' with eval.raw."""
    return [""] + [ema_suffix(d) for d in config.train.ema_decays] + (["raw"] if config.eval.raw else [])


def score_all(evaluator: Scorer, emas: dict[str, AveragedModel], net: nn.Module, config: RunConfig,
              num_samples: int) -> dict[str, float]:
    """Scores of every kept EMA (and of the raw weights with eval.raw), each under its own metric names."""
    models = {name: ema.module for name, ema in emas.items()} | ({"raw": net} if config.eval.raw else {})
    scores = {}
    for name, model in models.items():
        scores |= {(f"{key}_{name}" if name else key): value for key, value in evaluator(model, num_samples).items()}
    return scores
