"""Multi-process training under torchrun: process group, rank-0 rules and the few collectives `train` needs.

torchrun (the same as ``python -m torch.distributed.run``) starts one process per GPU or CPU share and
sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Without them (a plain
``brats2d train``) `init` returns a world of one and every helper here is a no-op that issues no
collective, so single-process training stays exactly what it was.

Control traffic (stop flags, loss sums, RNG states, the resume state) always goes over a gloo group on
CPU tensors: under nccl that is a second group, so reading a flag never synchronizes the GPU stream.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from .device import resolve_device

R = TypeVar("R")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. The default is a world of one (no torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    ctrl: Any = None  # gloo process group for CPU-side control collectives
    owned: bool = False  # init() created the default group, so cleanup() destroys it

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} in the environment is not an integer (set by torchrun)") from None


def env_world() -> tuple[int, int, int, int]:
    """(rank, world_size, local_rank, local_world_size) from torchrun's variables; (0, 1, 0, 1) without them."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} "
                         f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}")
    return rank, world, local_rank, local_world


def init(device: str = "auto") -> tuple[Dist, torch.device]:
    """Join the torchrun job (gloo on CPU, nccl on CUDA) and pick this rank's device.

    Under torchrun any CUDA request becomes cuda:LOCAL_RANK: one GPU per process is what DDP expects
    and what torchrun's --nproc_per_node counts. Returns (Dist(), resolved device) outside torchrun.
    """
    rank, world, local_rank, local_world = env_world()
    dev = resolve_device(device)
    if world == 1:
        return Dist(), dev
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible: use "
                             f"--nproc_per_node <= the number of GPUs, or --device cpu")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise ValueError(f"a process group is already initialized as rank {dist.get_rank()} of "
                         f"{dist.get_world_size()}, but the environment says {rank} of {world}")
    ctrl = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return Dist(rank, world, local_rank, local_world, ctrl, owned), dev


def cleanup(d: Dist) -> None:
    """Leave the job (destroys the process group only if `init` created it)."""
    if d.owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    """Wait until every rank gets here (a no-op for a world of one)."""
    if d.enabled:
        dist.barrier(group=d.ctrl)


def all_sum(d: Dist, values: Sequence[float | int | torch.Tensor]) -> torch.Tensor:
    """Element-wise sum over ranks of a few scalars: (n,) float64 CPU tensor (identity for one rank).

    float64 holds image counts exactly and keeps loss sums as precise as the per-rank accumulators.
    """
    t = torch.stack([v.detach().to("cpu", torch.float64).reshape(()) if isinstance(v, torch.Tensor)
                     else torch.tensor(float(v), dtype=torch.float64) for v in values])
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=d.ctrl)
    return t


def any_true(d: Dist, flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank: the ranks agree on when to stop, or DDP would hang."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.ctrl)
    return bool(t.item())


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled; only ever between the job's own processes)."""
    if not d.enabled:
        return obj
    box = [obj if d.is_rank0 else None]
    dist.broadcast_object_list(box, src=0, group=d.ctrl)
    return box[0]


def gather_objects(d: Dist, obj: Any) -> list[Any] | None:
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere."""
    if not d.enabled:
        return [obj]
    out: list[Any] | None = [None] * d.world if d.is_rank0 else None
    dist.gather_object(obj, out, dst=0, group=d.ctrl)
    return out


def on_rank0(d: Dist, fn: Callable[[], R]) -> R | None:
    """Run `fn` on rank 0 only; if it raises, raise the same error on every rank.

    Rank 0 alone touches the run folder (lock, config, checkpoint). Without this a refusal there (folder
    in use, other settings, other world size) would leave the other ranks waiting forever.
    Returns fn() on rank 0 and None elsewhere.
    """
    if not d.enabled:
        return fn()
    result: R | None = None
    error: BaseException | None = None
    if d.is_rank0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    sent = error
    if sent is not None:
        try:
            pickle.dumps(sent)
        except Exception:  # noqa: BLE001 - an unpicklable error still has to reach the other ranks
            sent = RuntimeError(f"{type(error).__name__}: {error}")
    sent = broadcast_object(d, sent)
    if error is not None:
        raise error
    if sent is not None:
        raise sent
    return result


def to_cpu(tree: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor on the CPU (to send a state to other ranks)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(v) for v in tree)
    return tree


def broadcast_buffers(d: Dist, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, in place.

    DDP does this at the start of every training forward; doing it before validation makes every rank
    evaluate exactly the model that rank 0 checkpoints.
    """
    if d.enabled:
        for b in module.buffers():
            dist.broadcast(b.data, src=0)


def rank_seed(seed: int, rank: int, epoch: int = 0, step: int = 0) -> int:
    """A torch seed for rank > 0 derived from (seed, rank, epoch, step): distinct dropout masks per rank."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank, epoch, step]).generate_state(1, np.uint64)[0] >> 1)
