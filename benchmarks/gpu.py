"""GPU throughput of the paper's recipes: images/s and peak memory per training step, and one evaluation.

    python benchmarks/gpu.py [--seconds 4] [--out benchmarks/RESULTS.md]
    python benchmarks/gpu.py --smoke      # every row once at toy size on the CPU: the script's own check

Needs a CUDA device and torch only (no MLflow, Optuna or clean-fid: it runs on a bare GPU machine with
this repository and torch). Sized to finish in about 6 minutes on one H100/H200. For each network (the
official CIFAR-10 SongUNet at batch 128 per GPU, as the official 8-GPU run; DiT-B/4 on 32x32x4 latents at
batch 256), each objective (Flow Matching, MeanFlow at ratio 0.25 and 0.75), and each mode (eager fp32
with TF32, eager bf16 autocast, torch.compile fp32/TF32), it times full training steps (loss, backward,
Adam, EMA) after a warm-up and prints images/s, peak memory and the ratio to Flow Matching, beside the
official CIFAR-10 code's 610 images/s per H200 (0.21 s per step of 1024 images on 8 H200, compiled).
Then one evaluation's throughput: 1-NFE sampling of the SongUNet and the Inception features of clean-fid
(only if its weights are at /tmp/inception-2015-12-05.pt). With --out the table is appended there.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import time
from pathlib import Path

import torch

from workbench.meanflow import JVP_MODES, meanflow_loss
from workbench.meanflow.dit import DiT
from workbench.meanflow.songunet import SongUNet
from workbench.run.augment import AUGMENT_DIM, apply_augment, draw_augment

OFFICIAL_IMAGES_PER_S = 1024 / 0.21 / 8  # per H200: Gsunshine/py-meanflow README, CIFAR-10, torch.compile


SMOKE = False  # --smoke: toy widths and batches on the CPU


def networks(device):
    width, songunet_batch, dit_batch = (16, 4, 4) if SMOKE else (128, 128, 256)
    return {
        "SongUNet (CIFAR-10)": (lambda: SongUNet((3, 32, 32), 0, "(t,t-r)", channels=width, channel_mult=(2, 2, 2),
                                                 blocks=4, attn_resolutions=(16,), dropout=0.2,
                                                 augment_dim=AUGMENT_DIM).to(device), (3, 32, 32), songunet_batch, True),
        "DiT-B/4 (ImageNet latents)": (lambda: DiT((4, 32, 32), 1000, "(t,t-r)", hidden=6 * width, depth=12 if not SMOKE
                                                   else 1, heads=12 if not SMOKE else 2, patch_size=4).to(device),
                                       (4, 32, 32), dit_batch, False),
    }


def sync() -> None:
    if not SMOKE:
        torch.cuda.synchronize()


def mf_config(ratio: float):
    from types import SimpleNamespace

    return SimpleNamespace(ratio=ratio, tangent="(v,0,1)", adaptive_p=0.75, adaptive_c=1e-3, cfg_omega=1.0,
                           cfg_kappa=0.0, cfg_t_lo=0.0, cfg_t_hi=1.0)


def batch(shape, size, ratio, augment, device, generator):
    x = torch.rand(size, *shape, generator=generator).to(device) * 2 - 1
    t = torch.sigmoid(torch.randn(size, generator=generator) * 2 - 2)
    r = torch.sigmoid(torch.randn(size, generator=generator) * 2 - 2)
    t, r = torch.maximum(t, r), torch.minimum(t, r)
    r = torch.where(torch.rand(size, generator=generator) < ratio, r, t)
    cond = None
    if augment:
        x, labels = apply_augment(x, draw_augment(size, 0.12, generator))
        cond = {"augment_labels": labels}
    labels = torch.randint(0, 1000, (size,), generator=generator).to(device) if shape[0] == 4 else None
    rows = (r != t).nonzero().squeeze(1)  # on the CPU, as workbench/run/train.py finds them
    return x, t.to(device), r.to(device), torch.randn(size, *shape, generator=generator).to(device), labels, cond, rows


def time_steps(make_net, shape, size, augment, ratio, mode, seconds, device):
    """images/s and peak GiB of full training steps (loss, backward, Adam, EMA lerp) in `mode`."""
    torch.manual_seed(0)
    net = make_net().train()
    ema = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    config = mf_config(ratio)
    compiled = mode == "compiled fp32/TF32"
    dudt = JVP_MODES["whole" if compiled and ratio > 0 else "auto"]  # Flow Matching needs no JVP

    def loss_fn(x, t, r, e, labels, cond, rows):
        return meanflow_loss(net, x, t, r, e, config, labels=labels, dudt=dudt, cond=cond, rows=rows)[0]
    step_loss = torch.compile(loss_fn) if compiled else loss_fn
    generator = torch.Generator().manual_seed(0)
    batches = [batch(shape, size, ratio, augment, device, generator) for _ in range(4)]

    def step(i):
        x, t, r, e, labels, cond, rows = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "eager bf16"):
            loss = step_loss(x, t, r, e, labels, cond, None if compiled else rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(net.parameters()), 1 - 0.9999)

    for i in range(3 if not compiled else 6):  # warm-up (compilation included)
        step(i)
    sync()
    syncs = 0
    if not SMOKE:  # host synchronisations in one step (each a warning in this mode)
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(0)
        torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        sync()
    if not SMOKE:
        torch.cuda.reset_peak_memory_stats()
    start, steps = time.perf_counter(), 0
    while steps == 0 or time.perf_counter() - start < seconds:
        for _ in range(5 if not SMOKE else 1):
            step(steps)
            steps += 1
        sync()
    elapsed = time.perf_counter() - start
    return steps * size / elapsed, (torch.cuda.max_memory_allocated() / 2**30 if not SMOKE else 0.0), syncs


@torch.no_grad()
def evaluation_throughput(device, seconds):
    net = networks(device)["SongUNet (CIFAR-10)"][0]().eval()
    rows = 1000 if not SMOKE else 4
    z = torch.randn(rows, 3, 32, 32, device=device)
    t, r = torch.ones(rows, device=device), torch.zeros(rows, device=device)
    net(z, t, r)
    sync()
    start, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - start < seconds:
        net(z, t, r)
        n += rows
        sync()
    rows = {"1-NFE sampling, SongUNet": n / (time.perf_counter() - start)}
    if Path("/tmp/inception-2015-12-05.pt").is_file():
        from cleanfid.features import build_feature_extractor

        inception = build_feature_extractor("legacy_tensorflow", device, use_dataparallel=False)
        images = torch.randint(0, 256, (500, 3, 32, 32), device=device).float()
        inception(images)
        sync()
        start, n = time.perf_counter(), 0
        while n == 0 or time.perf_counter() - start < seconds:
            inception(images)
            n += 500
            sync()
        rows["Inception features (legacy_tensorflow)"] = n / (time.perf_counter() - start)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per row")
    parser.add_argument("--out", type=Path, default=None, help="append the markdown table to this file")
    parser.add_argument("--smoke", action="store_true", help="every row once, toy sizes, on the CPU (no numbers)")
    args = parser.parse_args()
    global SMOKE
    SMOKE = args.smoke
    if not SMOKE and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (--smoke checks the script on the CPU)")
    device = torch.device("cpu" if SMOKE else "cuda")
    seconds = 0.0 if SMOKE else args.seconds
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    card = "smoke (CPU)" if SMOKE else torch.cuda.get_device_name()
    lines = [f"## GPU: {card} ({datetime.date.today()}, commit {commit}, torch {torch.__version__}, "
             f"{platform.node()})", "", "`python benchmarks/gpu.py`; one GPU, full training steps (loss, backward, Adam, EMA).",
             "", "| network | batch | mode | objective | images/s | peak GiB | host syncs/step | / FM | / official 610 img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name, (make_net, shape, size, augment) in networks(device).items():
        for mode in ("eager fp32/TF32", "eager bf16", "compiled fp32/TF32"):
            fm = None
            for objective, ratio in (("Flow Matching", 0.0), ("MeanFlow 0.25", 0.25), ("MeanFlow 0.75", 0.75)):
                try:
                    rate, peak, syncs = time_steps(make_net, shape, size, augment, ratio, mode, seconds, device)
                except Exception as err:  # a mode that fails (a compile error) is a row, not the end of the run
                    line = f"| {name} | {size} | {mode} | {objective} | failed: {type(err).__name__}: {str(err)[:80]} | | | | |"
                else:
                    fm = rate if ratio == 0 else fm
                    vs_fm = f"{fm / rate:.2f}x" if fm and ratio else ""
                    official = f"{rate / OFFICIAL_IMAGES_PER_S:.2f}" if "SongUNet" in name else ""
                    line = (f"| {name} | {size} | {mode} | {objective} | {rate:,.0f} | {peak:.1f} | {syncs} | {vs_fm} "
                            f"| {official} |")
                print(line, flush=True)
                lines.append(line)
                torch.cuda.empty_cache()
    lines += ["", "| evaluation | images/s |", "|---|---|"]
    for what, rate in evaluation_throughput(device, seconds).items():
        lines.append(f"| {what} | {rate:,.0f} |")
        print(lines[-1], flush=True)
    if args.out and not SMOKE:
        with args.out.open("a") as out:
            out.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
