"""FSDP2 sharding of the policy, the momentum model and the reference (`fsdp: true`; issue 20, items 1-2), tested
on 2 CPU processes with gloo (tests/test_fsdp.py): the pieces, and the training loop that uses them against one
plain process. Launched as plain data parallel is (`accelerate launch --multi_gpu --num_processes N -m selfrl train
CFG --set fsdp=true`); accelerate's own FSDP plugin stays refused by selfrl/distributed.py's `init`, since this
module does the sharding.

Where the loop meets it (selfrl/run.py, grpo.py, rundir.py): the three models are sharded at setup; every block of
generation or no-grad scoring (rollouts, the anchor's KL, the reference, evaluation, the canary, probes) runs
inside `gathered`; the training pass is one plain forward per process (`rollout.score_once`), so every process
enters the same collectives; FSDP reduces the gradients (a sum); checkpoints are `save`'s directories (`shards/` in
a step_* checkpoint) and resume on any number of processes; `selfrl export` and `load_model` read them whole.

Why FSDP2 (`torch.distributed.fsdp.fully_shard`) directly rather than accelerate's plugin: the momentum model and
the reference are not trained, so they have no optimizer for accelerate to prepare, yet they must be sharded exactly
as the policy is; fully_shard applied with the same plan to the three gives each process the same dim-0 slice of
every tensor of all three models, so the EMA θk ← m·θk + (1 − m)·θq (methods.md §1) runs on each process's own
shards (`local_shards`) with no communication.

  shard            fully_shard each decoder layer, then the root, with optional mixed precision (bf16 compute,
                   fp32 reduction), gradients summed (not averaged: selfrl's per-process losses are shares of the
                   global token-mean, selfrl/distributed.py) and optional gradient checkpointing
  local_shards     the tensors a process owns, for the EMA
  gathered         every layer unsharded for a block of forward passes (generation, evaluation): the hand-written
                   sampler stops when its rows end, so processes run different numbers of forward passes, and a
                   sharded forward is a collective every process must enter; gathered, a forward is local
  save / load      torch.distributed.checkpoint: each process writes its shards, a load reshards to any number of
                   processes (2 -> 1 included) or into a plain unsharded model
  full_state_dict  the whole weights from a checkpoint directory, in one process, for `selfrl export`
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

MIXED_PRECISION = ("no", "bf16")


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of an HF causal LM (model.model.layers for Llama/Qwen/Mistral-style models)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no model.layers to shard")
    return list(layers)


def shard(model: torch.nn.Module, mixed_precision: str = "no", gradient_checkpointing: bool = False,
          trainable: bool = True) -> torch.nn.Module:
    """Shard `model` in place over the default process group: one FSDP unit per decoder layer and one for the rest.
    The same call on the policy, the momentum model and the reference gives all three the same layout."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, not {mixed_precision!r}")
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision == "bf16" else MixedPrecisionPolicy()
    if gradient_checkpointing and trainable:  # activations recomputed in backward: memory for compute (HF's own)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for block in _blocks(model):
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    for unit in _fsdp_modules(model) if trainable else []:  # each unit reduces its own gradients
        unit.set_gradient_divide_factor(1.0)  # a sum over processes: each loss is already its share of the mean
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no pre-multiplied sum)
    return model


def is_sharded(model: torch.nn.Module | None) -> bool:
    """Whether `shard` was applied to `model` (its root becomes an FSDP module): a type check, cheap per step."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local_shards(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """This process's slice of each tensor (a DTensor's local shard; a plain tensor is its own): in-place updates of
    the slices update the sharded parameters."""
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


def _fsdp_modules(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block `model` holds whole weights on every process (one all-gather per FSDP unit, the same on every
    process) and its forward passes communicate nothing; resharded on exit. A plain model passes through."""
    if not is_sharded(model) or getattr(model, "_selfrl_whole", False):  # plain, or gathered by an enclosing block
        yield model
        return
    units = _fsdp_modules(model)
    model._selfrl_whole = True
    for m in units:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield model
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(True)
        model._selfrl_whole = False


def save(path: Path, models: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write every process's shards of `models` (name -> module; the optimizer belongs to models["policy"]) into the
    directory `path` with torch.distributed.checkpoint. Collective: every process calls it with the same path."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {name: get_model_state_dict(m) for name, m in models.items()}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(models["policy"], optimizer)
    dcp.save(state, checkpoint_id=str(path))


def load(path: Path, models: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load `save`'s directory into `models`, sharded over any number of processes or whole in one plain process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    state = {name: get_model_state_dict(m) for name, m in models.items()}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(models["policy"], optimizer)
    dcp.load(state, checkpoint_id=str(path))
    for name, m in models.items():
        set_model_state_dict(m, state[name])
    if optimizer is not None:
        set_optimizer_state_dict(models["policy"], optimizer, state["optimizer"])


def full_state_dict(path: Path, name: str = "policy") -> dict[str, torch.Tensor]:
    """One model's whole tensors from `save`'s directory, read in one process (no process group): what
    `selfrl export` writes as one HF directory."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = Path(path) / f"{name}.full.pt.tmp"
    dcp_to_torch_save(str(path), str(out))  # every saved tensor, whole
    try:
        state = torch.load(out, weights_only=False)
    finally:
        out.unlink(missing_ok=True)
    return state[name]
