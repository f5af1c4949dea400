"""Data-parallel training of one run over N processes (torch.distributed: gloo on CPU, NCCL on GPU).

Every rank draws the same global batch (data rows, t, r, noise, class dropout) from the same seeded
generator and trains on its own contiguous slice of it, so N processes with batch B see exactly the
samples of one process with batch B, and a resumed run repeats them. After backward the gradients
are averaged over the ranks in one flat all-reduce, which also carries the loss (so every rank sees
the global loss and stops on a NaN together) and a stop flag (a SIGTERM to any rank stops all of them
at the same step, from one checkpoint). Parameters start equal (same seed) and stay equal: every rank
applies the same averaged gradient.

Why not DistributedDataParallel: its gradient reducer is armed by DDP.forward, and the MeanFlow loss
calls the network inside a forward-mode JVP (meanflow/jvp.py) and on sub-batches, which DDP's forward
cannot wrap. The loss runs on the plain module and the averaging is done here after backward: what
DDP does, less its overlap of communication with the backward pass.

Two ways in: torchrun (`wb train --nproc N` starts it; a cluster job may too) sets RANK / WORLD_SIZE
/ MASTER_ADDR in the environment, and `ranks()` (a study's cell with train.nproc > 1) makes the calling
process rank 0 and spawns ranks 1..N-1 on this machine with the same environment variables. Only rank
0 logs, evaluates and writes checkpoints; every rank reads the checkpoint when resuming.
"""
from __future__ import annotations

import atexit
import datetime
import multiprocessing
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(hours=2)  # ranks > 0 wait in an all-reduce while rank 0 evaluates
JOIN_TIMEOUT = datetime.timedelta(seconds=120)  # ranks() : how long rank 0 waits for the others to join


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks training one run (rank 0 of 1 when not distributed)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """This rank's contiguous slice of a global batch (the batch size is divisible by world)."""
        if rows is None or self.world == 1:
            return rows
        size = len(rows) // self.world
        return rows[self.rank * size:(self.rank + 1) * size]

    def average_gradients(self, params: list[torch.nn.Parameter], loss: torch.Tensor, stop: bool
                          ) -> tuple[torch.Tensor, bool]:
        """Averages the parameters' gradients over the ranks in place (one all-reduce); returns the
        loss averaged over the ranks and whether any rank asked to stop. A parameter that no rank
        gave a gradient keeps grad None, as in one process (Adam skips it)."""
        if self.world == 1:
            return loss.detach(), stop
        device = loss.device
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params]
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        flat = torch.cat([*grads, has_grad, loss.detach().float().reshape(1),
                          torch.tensor([float(stop)], device=device)])
        dist.all_reduce(flat)
        flat /= self.world
        offset, seen = 0, flat[-2 - len(params):-2].tolist()
        for p, any_rank in zip(params, seen):
            n = p.numel()
            if p.grad is not None:
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            elif any_rank > 0:
                p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n
        offset += len(params)
        return flat[offset], bool(flat[offset + 1] > 0)

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scalars averaged over the ranks (the shards are equal, so shard means average to the batch mean)."""
        if self.world == 1 or not values:
            return values
        names = sorted(values)
        stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float32).reshape(()).to(self.device_of(values))
                               for k in names])
        dist.all_reduce(stacked)
        return dict(zip(names, stacked / self.world))

    @staticmethod
    def device_of(values: dict[str, torch.Tensor]) -> torch.device:
        return next((v.device for v in values.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))


def current() -> Group:
    """The group this process trains in: torch.distributed's if initialized, else from torchrun's
    environment (initialized here), else one process."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
    # leave the group before the interpreter exits: left to static destruction, gloo's threads sometimes abort
    # a rank that has finished ("terminate called without an active exception", exit code -6)
    atexit.register(_leave_group)
    return current()


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(group: Group, device: torch.device) -> torch.device:
    """CUDA ranks on one machine each take their own GPU (local rank modulo the visible GPUs)."""
    if device.type == "cuda" and group.world > 1:
        return torch.device("cuda", group.local_rank % torch.cuda.device_count())
    return device


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ranks(nproc: int, helper, args: tuple, threads: int | None = None) -> Iterator[Group]:
    """Makes this process rank 0 of `nproc` on this machine: spawns ranks 1..nproc-1, each running
    helper(*args) with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set as torchrun sets them, joins
    the group, yields it; on the way out leaves the group and waits for the helpers (a failed rank 0
    ends them). threads: torch threads per rank."""
    if nproc == 1:
        yield Group()
        return
    port = free_port()
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc)}
    context = multiprocessing.get_context("spawn")
    helpers = [context.Process(target=_run_rank, args=(env | {"RANK": str(r), "LOCAL_RANK": str(r)}, threads,
                                                        helper, args), daemon=True) for r in range(1, nproc)]
    saved = {k: os.environ.get(k) for k in (*env, "RANK", "LOCAL_RANK")}
    ok = False
    try:
        for process in helpers:
            process.start()
        os.environ.update(env | {"RANK": "0", "LOCAL_RANK": "0"})
        _join(env | {"RANK": "0"})
        yield current()
        ok = True
        dist.barrier()  # the other ranks wait here for rank 0's evaluation; then all leave the group together
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if dist.is_initialized():
            dist.destroy_process_group()
        for process in helpers:
            process.join(None if ok else 10)
            if process.is_alive():
                process.kill()
                process.join()
        failed = [p.exitcode for p in helpers if p.exitcode]
        if ok and failed:
            raise RuntimeError(f"a training rank > 0 exited with code {failed[0]} (see its output above)")


def _join(env: dict[str, str]) -> None:
    """Joins the group of ranks() over a TCP store hosted by rank 0; gives up after JOIN_TIMEOUT (a rank
    that failed to start), where env:// would wait for the whole collective TIMEOUT."""
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=rank == 0,
                          timeout=JOIN_TIMEOUT)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=TIMEOUT)


def _run_rank(env: dict[str, str], threads: int | None, helper, args: tuple) -> None:
    import signal

    from workbench.run.stopping import Interrupted, worker_stops_on_signals

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches rank 0, which stops every rank
    worker_stops_on_signals()
    os.environ.update(env)
    if threads:
        torch.set_num_threads(threads)
    _join(env)
    code = 0
    try:
        helper(*args)
        dist.barrier()
    except Interrupted:
        pass  # rank 0 saved the checkpoint
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        # Leave without the interpreter's teardown: destroying torch.distributed's C++ objects at exit can
        # abort ('terminate called without an active exception'), which would fail a finished run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
