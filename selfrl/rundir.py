"""The run directory, a run's only state: who may start or resume there, and what is saved, pinned and restored.

  check_fresh / lock_run_dir / release   a new run never overwrites another's files; one process trains there
  resume_config                          a resume holds the run to its own config (RESUME_SAFE may change)
  save / save_and_pin / rollback         checkpoints, their pointers (best, healthy, promoted, early_stop), and
                                         restoring one in place
Called by selfrl/run.py's run control; nothing here decides what a step computes.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from selfrl.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, meta_value, prune_checkpoints,
                               read_pointers, save_checkpoint, set_pointer, shards_tmp, step_dir, verify_checkpoint)
from selfrl.errors import SelfRLError
from selfrl.grpo_config import Config

if TYPE_CHECKING:
    from selfrl.run import Setup


# What a resume may change: how long, how often and how loudly the run goes on, never what it computes.
RESUME_SAFE = ("max_steps", "eval_every", "eval_limit", "eval_batch_size", "save_every", "save_total_limit",
               "max_skipped_steps", "report_to", "progress", "torch_threads", "output_dir")


def resume_config(run_dir: Path, sets: list[str]) -> Config:
    """The run's own config.yaml with `sets` on top, for `--resume`. A config.yaml that lacks fields (truncated, or
    not written by selfrl) is refused rather than completed with defaults, and so is a --set that changes anything
    but RESUME_SAFE; nothing is written here."""
    from selfrl.config import apply_overrides, parse_sets, read_yaml_mapping

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise SelfRLError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
    data = read_yaml_mapping(path)
    missing = [f.name for f in dataclasses.fields(Config) if f.name not in data]
    if missing:
        raise SelfRLError(f"--resume {run_dir}: config.yaml lacks {len(missing)} field(s) ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}): truncated or not a selfrl run's; refusing to "
                          "resume on defaults")
    here = {"output_dir": str(run_dir)}  # wherever the run directory now lives
    saved = apply_overrides(Config(), {**data, **here}, str(path)).validate()
    cfg = apply_overrides(saved, {**parse_sets(sets), **here}, "--set").validate()
    for f in dataclasses.fields(Config):
        was, now = getattr(saved, f.name), getattr(cfg, f.name)
        if was != now and f.name not in RESUME_SAFE:
            raise SelfRLError(f"--resume {run_dir}: {f.name} cannot change on resume (the run has {was!r}, --set says "
                              f"{now!r}); a resume may change only {', '.join(RESUME_SAFE[:-1])}")
    return cfg


def check_fresh(run_dir: Path) -> None:
    """A new run may not start in a directory that holds another run's metrics or checkpoints (issue 21: nothing
    of an earlier run is ever overwritten)."""
    if (run_dir / "metrics.jsonl").exists() and latest_checkpoint(run_dir, verify=False) is None:
        raise SelfRLError(f"output_dir {run_dir} holds a run that stopped before its first checkpoint, so it cannot "
                          f"be resumed; delete {run_dir} to start it over, or choose another output_dir")
    if (run_dir / "metrics.jsonl").exists() or list_checkpoints(run_dir):
        raise SelfRLError(f"output_dir {run_dir} already holds a run; pass --resume {run_dir} or choose another output_dir")


class RunDirBusy(SelfRLError):
    """Another live process holds the run directory's lock."""


def lock_run_dir(run_dir: Path):
    """An exclusive lock on the run directory for this process's lifetime (released when the file closes): a
    second `train` on the same output_dir stops at once instead of interleaving its metrics with the first's."""
    import fcntl

    f = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunDirBusy(f"output_dir {run_dir} is in use by {holder}; wait for it to finish or choose another "
                         "output_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"selfrl process {os.getpid()}\n")
    f.flush()
    return f


def unlock(f) -> None:
    """Empty the lock file (so a run directory holds the same bytes before and after any command) and release it."""
    f.seek(0)
    f.truncate()
    f.close()


def release(s: Setup) -> None:
    """Release the run directory's lock (train() calls this however the run ends)."""
    if s.lock is not None:
        unlock(s.lock)
        s.lock = None


def write_shards(s: Setup, step: int) -> None:
    """fsdp: every process writes its shards of the policy, the momentum model and the optimizer into step `step`'s
    temporary directory (torch distributed checkpoint), which process 0's `save` then completes and renames. A no-op
    without fsdp. Collective: every process calls it, before process 0's save."""
    import shutil

    from selfrl import distributed as dist
    from selfrl import fsdp

    if not s.cfg.fsdp:
        return
    where = shards_tmp(s.run_dir, step)
    if dist.is_main():
        shutil.rmtree(where.parent, ignore_errors=True)  # a half-written one from a crash
        where.parent.mkdir(parents=True)
    dist.barrier()
    models = {"policy": s.model, **({"momentum": s.momentum} if s.momentum is not None else {})}
    try:
        fsdp.save(where, models, s.optimizer)
    except OSError as e:
        raise SelfRLError(f"saving checkpoint step_{step:06d}'s shards failed: {e.strerror or e}") from None
    dist.barrier()


def save(s: Setup, step: int, extra: dict) -> None:
    save_checkpoint(s.run_dir, step, s.model, s.tokenizer, s.momentum_state, s.optimizer, s.scheduler, s.stream.cursor,
                    extra=extra, sharded=s.cfg.fsdp)


def load(s: Setup, ckpt: Path, rng: bool = True) -> dict:
    """Restore checkpoint `ckpt` into the run in place (weights, momentum, optimizer, schedule, RNG); returns its meta."""
    return load_checkpoint(ckpt, s.model, s.momentum_state, s.optimizer, s.scheduler, rng=rng, momentum_model=s.momentum)


def rollback(s: Setup, step: int | None) -> None:
    """Restore the promoted checkpoint's policy, momentum and optimizer state in place. The step counter, data cursor,
    RNG and learning-rate schedule keep moving forward: replaying the same prompts and seeds would only reproduce
    the regression (issue 7)."""
    if step is None:
        raise SelfRLError(f"rollback impossible: no promoted checkpoint is left in {s.run_dir}")
    ckpt = step_dir(s.run_dir, step)
    problem = verify_checkpoint(ckpt)
    if problem is not None:
        raise SelfRLError(f"rollback to {ckpt.name} impossible: {problem}")
    schedule = s.scheduler.state_dict()
    load(s, ckpt, rng=False)
    s.scheduler.load_state_dict(schedule)
    for group, lr in zip(s.optimizer.param_groups, s.scheduler.get_last_lr()):
        group["lr"] = lr  # the restored optimizer state carries the promoted step's rate


def save_and_pin(s: Setup, step: int, metrics: dict, regressed: dict, healthy: bool) -> None:
    """Save this step; pin the best by validation, the last healthy one and the early-stopping best, then keep the
    newest save_total_limit. The gate (issue 7): a checkpoint within tolerance of the start model's probe scores is
    promoted; on a regression, `rollback` saves the promoted weights (restored by after_step) under this step (a
    resume must not pick up the regressed ones), `stop` saves the regressed checkpoint for inspection (after_step
    then ends the run). Process 0 alone calls this."""
    cfg = s.cfg
    val = metrics.get("val/accuracy")
    extra = {k: v for k, v in metrics.items() if k in ("val/accuracy", "stop/accuracy") or k.startswith(("safety/", "gate/"))}
    extra["healthy"] = int(healthy)
    if "gate/rolled_back_to" in metrics:
        # This step's val and probe scores describe the weights just discarded, not the ones saved here.
        extra, val = {"gate/rolled_back_to": metrics["gate/rolled_back_to"], "healthy": int(healthy)}, None
    save(s, step, extra)
    if s.probes is not None and not regressed:
        set_pointer(s.run_dir, "promoted", step)
    pins = read_pointers(s.run_dir)
    if val is not None and val > meta_value(s.run_dir, pins.get("best"), "val/accuracy"):
        set_pointer(s.run_dir, "best", step)
    if healthy:
        set_pointer(s.run_dir, "healthy", step)
    if s.stop_best[1] == step:
        set_pointer(s.run_dir, "early_stop", step)
    prune_checkpoints(s.run_dir, cfg.save_total_limit)
