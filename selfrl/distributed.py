"""Multi-process data parallel through HF accelerate (`accelerate launch ... -m selfrl train ...`; issue 5, item 3).

Every process holds the whole policy, momentum model and reference model and takes prompts_per_step / world of each
step's prompts, so all samples of a prompt (policy and momentum) live on one process and its vote is local. Each
process's loss is its share of the global token-mean (the denominator is the global token count), so the sum of
the processes' gradients is the 1-process gradient; after that sum every process applies the same clipped update
and the same EMA, and the replicas stay identical (`check_replicas` verifies it at every checkpoint).

With one process (a plain `selfrl train`) every function here returns its input unchanged: no collective runs and
the single-process path is the one it always was.

Sharded parameters are selfrl's own `fsdp: true` (selfrl/fsdp.py), launched the same way: the policy, momentum and
reference sharded alike, so the EMA runs on each process's slices, and gathered whole for generation. accelerate's
DeepSpeed and FSDP plugins, which would shard the policy alone behind the loop's back, are refused by `init`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import torch

from selfrl.errors import ConfigError, SelfRLError

log = logging.getLogger("selfrl")


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def world() -> int:
    """Number of processes (1 unless launched by accelerate with several)."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def is_main() -> bool:
    """Process 0 alone writes metrics, TensorBoard events and checkpoints, and prints (style.md §10)."""
    return rank() == 0


def init(device_name: str) -> torch.device:
    """Join the process group accelerate launched (a no-op for a plain process) and return this process's device.

    `device_name` is cfg.device. accelerate.PartialState picks the backend: gloo for CPU processes (`--cpu`, or no
    GPU), NCCL on GPUs with one device per process (cuda:LOCAL_RANK)."""
    from accelerate import PartialState

    from selfrl.models import resolve_device

    for flag, plugin in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP"),
                         ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")):
        if _flag(flag):
            raise SelfRLError(f"accelerate launched with {plugin}: selfrl shards with its own `fsdp: true` (the "
                              "momentum model and the reference must be sharded as the policy is); answer no to "
                              "DeepSpeed and FSDP in `accelerate config` and set fsdp: true")
    no_gpu = device_name == "auto" and not torch.cuda.is_available()
    cpu = device_name == "cpu" or _flag("ACCELERATE_USE_CPU") or no_gpu
    state = PartialState(cpu=cpu)  # under accelerate launch: init_process_group (gloo on CPU, NCCL on GPUs)
    if state.num_processes == 1:
        if _flag("ACCELERATE_USE_CPU") and os.environ.get("MASTER_ADDR") and "WORLD_SIZE" not in os.environ:
            # accelerate's --cpu launcher starts several processes only through mpirun (--mpirun_hostfile); without
            # it one process would train alone while the user believes it has company.
            raise SelfRLError("accelerate launch --cpu started 1 process, not --num_processes; on CPUs launch with "
                              "`accelerate launch --multi_gpu --num_processes N -m selfrl train ...` (gloo)")
        return resolve_device(device_name)
    if device_name != "auto" and state.device.type != device_name:
        raise ConfigError(f"device: {device_name!r}, but accelerate launched the processes on {state.device.type}; "
                          "set device=auto")
    if not is_main():
        log.setLevel(logging.ERROR)  # process 0 speaks for all of them; an error still names its process
    return state.device


def _device() -> torch.device:
    """Where a collective's tensors must be: NCCL reduces GPU tensors only, gloo CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(x):
    """Sum of a number or tensor over processes (the same value on every process)."""
    if world() == 1:
        return x
    t = (x.detach() if torch.is_tensor(x) else torch.tensor(x)).to(_device(), torch.float64, copy=True)
    torch.distributed.all_reduce(t)
    return t.to(x.device, x.dtype) if torch.is_tensor(x) else float(t)


def all_reduce_grads_(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every trainable parameter's gradient over processes, in place.

    A SUM, not DDP's mean: each process's loss is already its share of the global token-mean (policy_loss gets the
    global token count), so the sum is the gradient of the 1-process loss. One collective per tensor (as DDP's
    buckets would, only unbucketed) keeps memory flat; a step is dominated by generation, not by this."""
    if world() == 1:
        return
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:  # unused on this process's rows; every process must enter the same collectives
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)


def global_metrics(metrics: dict, weights: dict, sums: Iterable[str] = ()) -> dict:
    """Per-process step metrics -> global ones, the same on every process: a key in `weights` is a mean over that
    many items on this process (the global value is the weighted mean); a key in `sums` adds up; any other key is
    already the same everywhere (learning rate, gradient norm, ...). None stays None."""
    if world() == 1:
        return metrics
    means = [k for k in weights if metrics.get(k) is not None]
    added = [k for k in sums if metrics.get(k) is not None]
    # a process with no items (an online-filtered step can leave one without prompts) adds nothing, not 0 * nan
    vec = [float(metrics[k]) * float(weights[k]) if weights[k] else 0.0 for k in means]
    vec += [float(weights[k]) for k in means]
    vec += [float(metrics[k]) for k in added]
    t = torch.tensor(vec, dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t)
    t, n = t.tolist(), len(means)
    out = dict(metrics)
    for i, k in enumerate(means):
        out[k] = t[i] / t[n + i] if t[n + i] > 0 else 0.0  # no items anywhere: 0, as masked_mean gives
    for i, k in enumerate(added):
        out[k] = int(t[2 * n + i]) if isinstance(metrics[k], int) else t[2 * n + i]  # a count stays a count
    return out


def gather(obj) -> list:
    """Every process's picklable `obj`, in process order (the same list on every process)."""
    if world() == 1:
        return [obj]
    parts = [None] * world()
    torch.distributed.all_gather_object(parts, obj)
    return parts


def from_main(fn):
    """fn() computed on process 0 alone and handed to every process: a whole-step decision (a probe score, say)
    made once, so no process can decide differently; the others wait for it."""
    if world() == 1:
        return fn()
    box = [fn() if is_main() else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def union(items: set) -> set:
    """The union of every process's set (e.g. the distinct pseudo-labels of a step)."""
    if world() == 1:
        return items
    parts = [None] * world()
    torch.distributed.all_gather_object(parts, sorted(items))
    return {x for part in parts for x in part}


def checksum(tensors: Iterable[torch.Tensor]) -> float:
    """Sum of every element, accumulated in float64 (no float64 copy of the weights): a one-ulp change of any
    float32 weight moves it."""
    return float(sum(t.detach().sum(dtype=torch.float64) for t in tensors))


def check_replicas(step: int, groups: dict[str, Iterable[torch.Tensor] | None]) -> None:
    """Every process must hold the same weights (policy, momentum; a None group is absent): the checkpoint process 0
    writes stands for all. Raises SelfRLError on every process when one differs; logs the per-process checksums."""
    if world() == 1:
        return
    names = [k for k, v in groups.items() if v is not None]
    mine = torch.tensor([checksum(groups[k]) for k in names], dtype=torch.float64, device=_device())
    parts = [torch.empty_like(mine) for _ in range(world())]
    torch.distributed.all_gather(parts, mine)
    rows = [p.tolist() for p in parts]  # (world, len(names))
    for j, name in enumerate(names):
        per_process = [r[j] for r in rows]
        bad = [i for i, v in enumerate(per_process) if v != per_process[0]]
        if bad:
            raise SelfRLError(f"step {step}: process {bad[0]}'s {name} weights differ from process 0's "
                              f"(checksums {per_process}); the replicas diverged")
        log.info("step %d: %s checksum per process %s", step, name, per_process)


def barrier() -> None:
    """Wait for every process (e.g. until process 0 has written a checkpoint the others may read)."""
    if world() > 1:
        torch.distributed.barrier()
