"""The metric-name grammar, in one place: `<family>_<sampler>[_<weights>]`, e.g. transport_1nfe, fid_fm50,
fid_1nfe_ema0.99995. A family (energy, swd, precision, tv, modes, transport, labelprec, fid, kid,
fdlatent, spread) is what is scored; a sampler how the samples were drawn (<k>nfe: MeanFlow with k steps, fm<k>:
the Flow Matching Euler baseline with k steps, exact: the run's own exact target map, a reference); weights which
EMA (none: train.ema_decay's) or raw. `uerr` (pairs from the paper's (t, r) sampler) and `uerrown` (from the run's
own) stand alone. spread is a ratio whose target is 1: neither direction is better, and no study ranks by it.
Imports no torch (the stores and reports read names too)."""
from __future__ import annotations

HIGHER_IS_BETTER = ("precision", "modes", "labelprec")  # every other evaluation metric but spread: lower is better
TWO_SIDED = ("spread",)  # 1 is the target
EXACT_FAMILIES = ("energy", "swd", "precision", "tv", "modes")  # the scores of the exact map logged as <family>_exact


def family(metric: str) -> str:
    """'transport_1nfe' -> 'transport'."""
    return metric.split("_", 1)[0]


def higher_is_better(metric: str) -> bool:
    return family(metric) in HIGHER_IS_BETTER


def with_sampler(metric: str, sampler: str) -> str:
    """The same family (and weights) drawn another way: ('transport_1nfe', '2nfe') -> 'transport_2nfe'."""
    parts = metric.split("_")
    return "_".join([parts[0], sampler, *parts[2:]]) if len(parts) > 1 else metric


def baselines(metric: str, metrics) -> list[str]:
    """The Flow Matching Euler scores of `metric`'s family among `metrics`, fewest steps first."""
    stem = f"{family(metric)}_fm"
    return sorted((k for k in metrics if k.startswith(stem)), key=lambda k: (len(k), k))


def samplers(nfe: tuple[int, ...], fm_steps: tuple[int, ...]) -> dict[str, tuple[bool, int]]:
    """Metric-name suffix -> (Flow Matching Euler?, steps): {'1nfe': (False, 1), ..., 'fm50': (True, 50)}."""
    return {f"{k}nfe": (False, k) for k in nfe} | {f"fm{k}": (True, k) for k in fm_steps}


def metric_names(config) -> list[str]:
    """The names of the final metrics a run of `config` logs, without loading a model or a scorer: those of
    train.ema_decay's EMA, then each again for every extra EMA (fid_1nfe_ema0.99995) and the raw weights."""
    from workbench.run.emas import ema_suffix

    names = _metric_names(config)
    extra = [ema_suffix(d) for d in config.train.ema_decays] + (["raw"] if config.eval.raw else [])
    return names + [f"{name}_{suffix}" for suffix in extra for name in names]


def _metric_names(config) -> list[str]:
    from workbench.data import EXACT_REFERENCES, TOY_SETS, load_data

    ev, name = config.eval, config.data.name
    suffixes = list(samplers(ev.nfe, ev.fm_steps))
    if name in TOY_SETS:
        families = ["energy", "swd"]
        if name in EXACT_REFERENCES:
            labelled = config.data.labels and load_data(name, "test").num_classes
            families += ["precision", "tv", "modes", "transport", "spread"] + (["labelprec"] if labelled else [])
            exact = [f"{kind}_exact" for kind in EXACT_FAMILIES] + (["labelprec_exact"] if labelled else [])
            return [f"{kind}_{s}" for s in suffixes for kind in families] + exact + ["uerr", "uerrown"]
        return [f"{kind}_{s}" for s in suffixes for kind in families]
    if name == "latents" and ev.features != "inception":
        return [f"fdlatent_{s}" for s in suffixes]
    families = ("fid",) if ev.features == "inception" else ("fid", "kid")  # KID needs the reference features
    return [f"{kind}_{s}" for s in suffixes for kind in families]
