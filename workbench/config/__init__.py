"""One typed, frozen config per run. Defaults give a tiny CPU run (MLP on checkerboard).

Dotted overrides (`meanflow.ratio=0.5`) are checked by pydantic: an unknown key or invalid value
raises ConfigError naming the key, the value and what is allowed.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError, field_validator, model_validator

from workbench.config.fields import ConfigError, F, _Frozen, describe_fields
from workbench.config.networks import DiTConfig as DiTConfig
from workbench.config.networks import MLPConfig as MLPConfig
from workbench.config.networks import NetConfig
from workbench.config.networks import SongUNetConfig as SongUNetConfig
from workbench.config.networks import UNetConfig as UNetConfig
from workbench.config.objectives import OBJECTIVE_SECTIONS as OBJECTIVE_SECTIONS
from workbench.config.objectives import AlphaFlowConfig, CurriculumConfig, IMFConfig
from workbench.data import DATASETS
from workbench.meanflow import OBJECTIVES, TANGENTS, objective_conflict, parse_time_dist


class DataConfig(_Frozen):
    name: Literal[tuple(DATASETS)] = F("checkerboard", "data set")
    path: str = F("", ".npz file or image folder, for name = npz / folder / latents")
    data_dir: str = F("data", "where torchvision sets live (MNIST/raw, cifar-10-batches-py)")
    download: bool = F(False, "let torchvision download a missing set (needs internet)")
    labels: bool = F(True, "use the set's class labels (class-conditional model, guidance); false: unconditional")
    hflip: bool = F(False, "images: flip each training image horizontally with probability 1/2 (official CIFAR-10)")
    augment_p: float = F(0.0, "images: probability of each transform of EDM's AugmentPipe as the official CIFAR-10 "
                         "recipe uses it (0.12 there): scale, anisotropic scale, fractional translation, plus an "
                         "x-flip of every other image; the network is conditioned on the 6 augmentation labels "
                         "(net.arch = songunet); 0 = off", ge=0, le=1)


class MeanFlowConfig(_Frozen):
    ratio: float = F(0.25, "fraction of samples with r != t (Table 1a); 0 = Flow Matching", ge=0, le=1)
    ratio_mask: Literal["random", "prefix"] = F("random", "which samples get r = t: random (PyTorch) or prefix (JAX)")
    t_dist: str = F("lognorm(-0.4,1.0)", "time distribution (Table 1d): uniform(lo,hi) or lognorm(mu,sigma)")
    r_dist: str = F("", "separate distribution for the second draw; empty = same as t_dist")
    tr_sampler: Literal["v0", "v1"] = F("v0", "v0: t = max, r = min of the draws, then the r = t mask (paper); "
                                        "v1: t keeps its draw, mask, then r = min(t, r) (PyTorch code's improved CIFAR-10)")
    tangent: Literal[tuple(TANGENTS)] = F("(v,0,1)", "JVP tangent over (z, r, t) (Table 1b)")
    adaptive_p: float = F(1.0, "adaptive loss weight power p (Table 1e); 0 = plain L2", ge=0)
    adaptive_c: float = F(1e-3, "c in w = 1 / (||Delta||^2 + c)^p", gt=0)
    cfg_omega: float = F(1.0, "guidance scale w (Table 1f); 1 with kappa 0 = no guidance", gt=0)
    cfg_kappa: float = F(0.0, "mixing kappa (Table 5); effective scale w / (1 - kappa)", ge=0, lt=1)
    cfg_t_lo: float = F(0.0, "guidance only for t in [cfg_t_lo, cfg_t_hi]", ge=0, le=1)
    cfg_t_hi: float = F(1.0, "upper end of the guidance interval", ge=0, le=1)
    class_drop: float = F(0.1, "fraction of labels replaced by the null class", ge=0, le=1)
    objective: Literal[tuple(OBJECTIVES)] = F("meanflow", "training objective (meanflow/objectives.py): meanflow "
                                              "(Eq. 10), mmf (Modular MeanFlow), splitmeanflow (interval splitting), "
                                              "alphaflow (alpha-Flow, meanflow.alphaflow.*), imf (improved "
                                              "MeanFlow, meanflow.imf.*)")
    dudt: Literal["jvp", "finite_difference"] = F("jvp", "d/dt u by a JVP or by central differences (no forward-mode AD)")
    fd_step: float = F(5e-3, "finite-difference step d: (u(z + d v, t + d) - u(z - d v, t - d)) / 2d", gt=0, le=0.05)
    beta: float = F(1.0, "tangent coefficient: z-tangent beta v + (1 - beta) u(z, t, t); 1 = the paper", ge=0, le=1)
    mmf_lambda: float = F(1.0, "mmf: gradient share of the d/dt u term (0 = MeanFlow's stop-gradient)", ge=0, le=1)
    mmf_warmup: int = F(0, "mmf: steps over which lambda grows linearly from 0 to mmf_lambda", ge=0)
    alphaflow: AlphaFlowConfig = AlphaFlowConfig()
    imf: IMFConfig = IMFConfig()
    curriculum: CurriculumConfig = CurriculumConfig()

    @field_validator("t_dist", "r_dist")
    @classmethod
    def _dist(cls, spec: str) -> str:
        if spec:
            parse_time_dist(spec)
        return spec.replace(" ", "")

    @model_validator(mode="after")
    def _interval(self) -> MeanFlowConfig:
        if self.cfg_t_lo > self.cfg_t_hi:
            raise ValueError(f"cfg_t_lo={self.cfg_t_lo} must be <= cfg_t_hi={self.cfg_t_hi}")
        if problem := objective_conflict(self, {k: f.default for k, f in type(self).model_fields.items()}):
            raise ValueError(problem)
        return self


class OptimConfig(_Frozen):
    name: Literal["adam", "adamw"] = F("adam", "optimizer")
    lr: float = F(1e-3, "peak learning rate", gt=0)
    betas: tuple[float, float] = F((0.9, 0.999), "Adam betas, e.g. 0.9,0.95")
    weight_decay: float = F(0.0, "decoupled for adamw, L2 for adam", ge=0)
    warmup_steps: int = F(0, "linear warmup from 0 to lr", ge=0)
    decay: Literal["constant", "cosine"] = F("constant", "after warmup")
    grad_clip: float = F(0.0, "max global gradient norm; 0 = off", ge=0)


class TrainConfig(_Frozen):
    steps: int = F(3000, "optimizer steps", ge=1)
    batch_size: int = F(512, "samples per optimizer step", ge=1)
    seed: int = F(0, "seeds init, batches, t, r, noise and class dropout", ge=0, lt=2**31)
    ema_decay: float = F(0.999, "EMA of weights used for sampling; 0 = raw weights", ge=0, lt=1)
    ema_decays: tuple[float, ...] = F((), "more EMA rates kept beside ema_decay (official CIFAR-10: 0.99995, 0.9996), "
                                      "each in the checkpoint and scored at every evaluation (metric names end in "
                                      "_ema<rate>, e.g. fid_1nfe_ema0.99995)")
    ema_every: int = F(1, "steps between EMA updates, each with rate^ema_every (official CIFAR-10: 16)", ge=1)
    compile: bool = F(False, "torch.compile the loss (forward, whole-batch torch.func.jvp, backward), as the official "
                      "CIFAR-10 code does; eager runs use the faster tangent pass, which compile cannot trace")
    tf32: bool = F(True, "CUDA: float32 matrix products and convolutions in TF32 (the official code's "
                   "set_float32_matmul_precision('high'))")
    precision: Literal["fp32", "bf16"] = F("fp32", "bf16 autocast outside the JVP (the JVP stays fp32)")
    device: Literal["auto", "cpu", "cuda"] = F("auto", "auto = cuda when available")
    checkpoint_every: int = F(1000, "steps between checkpoints (--resume continues from the last)", ge=1)
    log_every: int = F(50, "steps between logged metric rows", ge=1)
    nproc: int = F(1, "processes training this run data-parallel, each on batch_size / nproc rows (gloo on CPU, "
                   "NCCL on GPU; wb train starts them with torchrun)", ge=1)

    @field_validator("ema_decays")
    @classmethod
    def _rates(cls, rates: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < rate < 1 for rate in rates) or len(set(rates)) != len(rates):
            raise ValueError(f"EMA rates must be distinct numbers in (0, 1), got {rates}")
        return rates

    @model_validator(mode="after")
    def _extra_rates(self) -> TrainConfig:
        if self.ema_decay in self.ema_decays:
            raise ValueError(f"ema_decays={self.ema_decays} repeats ema_decay={self.ema_decay}")
        return self

    @model_validator(mode="after")
    def _shards(self) -> TrainConfig:
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by nproc={self.nproc} "
                             "(every process trains on an equal slice of the batch)")
        return self


class SampleConfig(_Frozen):
    steps: int = F(1, "NFE of the sample picture (1 = one-step)", ge=1)
    num_points: int = F(4000, "points in a 2D scatter", ge=1)
    num_images: int = F(64, "images in a grid", ge=1)
    seed: int = F(0, "noise seed: sample i depends only on (seed, i)", ge=0, lt=2**31)


class EvalConfig(_Frozen):
    nfe: tuple[int, ...] = F((1, 2), "MeanFlow step counts scored (metric names end in _1nfe, _2nfe)")
    raw: bool = F(False, "also score the raw (not averaged) weights, metric names ending in _raw (as the official "
                  "CIFAR-10 code does)")
    fm_steps: tuple[int, ...] = F((50,), "Flow Matching Euler step counts scored as a baseline (_fm50)")
    num_samples: int = F(4000, "samples scored at the end (toy: against this many held-out points)", ge=2)
    every: int = F(0, "steps between evaluations during training (curves); 0 = only at the end", ge=0)
    num_samples_during: int = F(1000, "samples scored during training", ge=2)
    seed: int = F(0, "noise seed of evaluation samples (and of the classifier features)", ge=0, lt=2**31)
    features: Literal["auto", "classifier", "inception", "latent"] = F(
        "auto", "image features: classifier trained on the labels (offline) or clean-fid Inception; "
        "auto = classifier when the data has labels; latent data: Frechet distance of the latents themselves")
    inception_mode: Literal["clean", "legacy_tensorflow"] = F(
        "clean", "clean-fid's Inception mode: clean (PIL resize, clean-fid's own numbers) or legacy_tensorflow (the "
        "TF-Inception FID most papers report, and what the official MeanFlow CIFAR-10 evaluation computes)")
    quantize: Literal["round", "floor"] = F("round", "generated images to 8 bits: round (as a saved PNG) or floor(255 x), "
                                            "as the official CIFAR-10 evaluation does")
    fid_reference: str = F("", ".npz of reference statistics ('mu' and 'sigma'; ImageNet 256: ADM's "
                           "VIRTUAL_imagenet256_labeled.npz); empty = the train split's (CIFAR-10: clean-fid's)")
    vae_path: str = F("", "latents scored as images (eval.features = inception): a local diffusers AutoencoderKL "
                      "folder that decodes them (SD-VAE ft-MSE for the official ImageNet recipe)")
    cache_dir: str = F("data/cache", "where classifier weights and reference features are cached")
    omega: float = F(1.0, "guidance scale fed to a network trained with meanflow.imf.guidance = omega or interval, "
                     "in evaluation and sample pictures (1 = unguided); other runs' guidance is trained in "
                     "(meanflow.cfg_omega)", ge=1)
    interval: tuple[float, float] = F((0.0, 1.0), "guidance interval [t_min, t_max] fed with eval.omega "
                                      "(meanflow.imf.guidance = interval)")

    @field_validator("nfe", "fm_steps")
    @classmethod
    def _positive(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in steps):
            raise ValueError(f"step counts must be >= 1, got {steps}")
        return steps

    @field_validator("interval")
    @classmethod
    def _interval(cls, interval: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= interval[0] <= interval[1] <= 1:
            raise ValueError(f"needs 0 <= t_min <= t_max <= 1, got {interval}")
        return interval


class RunConfig(_Frozen):
    data: DataConfig = DataConfig()
    net: NetConfig = NetConfig()
    meanflow: MeanFlowConfig = MeanFlowConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    eval: EvalConfig = EvalConfig()

    @property
    def guidance_inputs(self) -> bool:
        """Whether the network takes iMF's guidance inputs (omega, t_min, t_max), drawn in training and chosen at
        sampling time (eval.omega, eval.interval)."""
        return self.meanflow.objective == "imf" and self.meanflow.imf.guidance != "fixed"

    def sampled_guidance(self) -> tuple[float, tuple[float, float]]:
        """(scale, interval) of the guided field the samples follow: eval.omega on eval.interval for a network
        with guidance inputs, else what was trained in, w' = cfg_omega / (1 - cfg_kappa) on [cfg_t_lo, cfg_t_hi]."""
        if self.guidance_inputs:
            return self.eval.omega, self.eval.interval
        mf = self.meanflow
        return mf.cfg_omega / (1 - mf.cfg_kappa), (mf.cfg_t_lo, mf.cfg_t_hi)

    @model_validator(mode="after")
    def _imf(self) -> RunConfig:
        mf = self.meanflow
        if (mf.objective == "imf" and mf.imf.tangent == "head") != self.net.v_head:
            raise ValueError(f"net.v_head={self.net.v_head} with meanflow.objective={mf.objective!r}, "
                             f"imf.tangent={mf.imf.tangent!r}: the v-head serves imf.tangent='head' alone, "
                             "which needs it")
        if self.guidance_inputs and not self.data.labels:
            raise ValueError(f"meanflow.imf.guidance={mf.imf.guidance!r} guides towards class labels: set data.labels=true "
                             "(on a labelled data set)")
        fields = type(self.eval).model_fields
        chosen = {k: getattr(self.eval, k) for k in ("omega", "interval") if getattr(self.eval, k) != fields[k].default}
        if chosen and not self.guidance_inputs:
            raise ValueError(f"eval.{next(iter(chosen))}={next(iter(chosen.values()))}: the guidance chosen at sampling "
                             "time needs a network with guidance inputs (meanflow.objective='imf', meanflow.imf.guidance "
                             "= omega or interval); this run's guidance is trained in (meanflow.cfg_omega)")
        if mf.imf.guidance == "omega" and "interval" in chosen:
            raise ValueError(f"eval.interval={self.eval.interval}: meanflow.imf.guidance='omega' trains guidance on "
                             "[0, 1] only; train with meanflow.imf.guidance='interval' to choose the interval")
        return self


def validate(tree: dict[str, Any]) -> RunConfig:
    """Nested dict -> RunConfig, or ConfigError naming the first bad key."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        shown = "" if isinstance(first.get("input"), dict) else f"={first.get('input')!r}"
        raise ConfigError(f"{key}{shown}: " * bool(key) + first["msg"].removeprefix("Value error, ")) from None


def with_overrides(config: RunConfig, overrides: list[str] | dict[str, Any]) -> RunConfig:
    """Applies 'a.b=value' strings (or a {dotted key: value} dict) to config."""
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    tree = config.model_dump()
    for key, value in items:
        node, parts = tree, key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth]) or "the config"
                allowed = ", ".join(node) if isinstance(node, dict) else "none (not a section)"
                raise ConfigError(f"unknown key {key!r}: {where} has keys {allowed}")
            if depth < len(parts) - 1:
                node = node[part]
        if isinstance(node[parts[-1]], dict):
            raise ConfigError(f"{key!r} is a section; set one of its keys: {', '.join(node[parts[-1]])}")
        node[parts[-1]] = _parse(value, node[parts[-1]])
    return validate(tree)


def _split(override: str) -> tuple[str, str]:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not KEY=VALUE (e.g. meanflow.ratio=0.5)")
    return key.strip(), value.strip()


def _parse(value: Any, current: Any) -> Any:
    """Strings from the command line; tuples as '1,2,2' or '(1,2,2)'; pydantic coerces the rest."""
    if isinstance(value, str) and isinstance(current, (tuple, list)):
        return [part for part in value.strip("()[] ").split(",") if part.strip()]
    return value


def describe() -> list[tuple[str, Any, str]]:
    """(dotted key, default, description with allowed values) for every config field."""
    return describe_fields(RunConfig)


def flatten(config: RunConfig) -> dict[str, Any]:
    """RunConfig -> {'meanflow.ratio': 0.25, ...} (tuples kept)."""
    def walk(node: dict, prefix: str) -> dict[str, Any]:
        return {k: v for key, value in node.items() for k, v in (
            walk(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}).items()}
    return walk(config.model_dump(), "")
