"""Checkpoints are boring files (style.md §9): step_000120/ with policy weights (HF format), momentum weights,
optimizer + scheduler, RNG states, data cursor and meta.json.

Crash safety (issue 6):
  * A checkpoint is written into `step_XXXXXX.tmp/` and renamed; a directory named `step_XXXXXX` is complete.
  * meta.json, written last, holds the SHA-256 of every other file. `latest_checkpoint` verifies them and falls
    back, with a warning, to the previous checkpoint when a file is missing, truncated or altered.
  * `pointers.json` in the run directory names checkpoints that retention must keep ("best", "healthy",
    "promoted", ...); it is replaced atomically. `prune_checkpoints` keeps the last K plus every pointed-to one,
    and deletes by renaming to `*.trash` first, so a kill mid-delete never leaves a half checkpoint under a
    valid name.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from selfrl import lora
from selfrl.errors import SelfRLError

log = logging.getLogger("selfrl")
POINTERS = "pointers.json"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step:06d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != "meta.json"}


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temp file, fsync it and rename it over `path`: readers see the old or the new file, never half."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


SHARDS = "shards"  # a sharded (fsdp) checkpoint's torch distributed checkpoint: policy, momentum, optimizer


def shards_tmp(run_dir: Path, step: int) -> Path:
    """Where every process writes its shards of step `step` before process 0 completes the checkpoint around them."""
    final = step_dir(run_dir, step)
    return final.with_name(final.name + ".tmp") / SHARDS


def save_checkpoint(
    run_dir: Path, step: int, model, tokenizer, momentum: dict | None, optimizer, scheduler, cursor: int,
    extra: dict | None = None, sharded: bool = False,
) -> Path:
    """Write step_XXXXXX/ atomically; `extra` goes into meta.json (e.g. the validation accuracy at this step).

    sharded (fsdp): the weights and optimizer state are already in step_XXXXXX.tmp/shards/ (every process wrote its
    shards, selfrl/fsdp.py `save`); this adds the policy's config and tokenizer, the schedule, the RNG and meta.json,
    whose digests then cover the shards too.

    Any OSError (disk full, permissions) removes the partial temp directory and raises a one-line SelfRLError:
    the checkpoints already on disk are untouched."""
    final = step_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    try:
        if sharded:
            if not (tmp / SHARDS).is_dir():
                raise SelfRLError(f"checkpoint {final.name}: the processes' shards are missing from {tmp}")
            model.config.save_pretrained(tmp / "policy")  # loadable through load_model, which reads the shards
            torch.save({"scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            # With LoRA only the policy adapter goes here (the base is the run's `model`; the momentum adapter is
            # saved below with the other momentum weights), so `policy/` stays one loadable adapter directory.
            model.save_pretrained(tmp / "policy", **({"selected_adapters": [lora.POLICY]} if lora.is_peft(model) else {}))
            if momentum is not None:
                save_file({k: v.contiguous() for k, v in momentum.items()}, tmp / "momentum.safetensors")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "policy")  # the policy directory loads on its own (eval, export)
        torch.save(
            {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            tmp / "rng.pt",
        )
        meta = {"step": step, "cursor": cursor, "time": time.time(), **(extra or {}), "files": _digests(tmp)}
        write_json_atomic(tmp / "meta.json", meta)
        if final.exists():  # a stale or corrupt checkpoint of the same step (resume fell back past it)
            shutil.rmtree(final.with_name(final.name + ".trash"), ignore_errors=True)
            os.replace(final, final.with_name(final.name + ".trash"))
        os.replace(tmp, final)  # a step_* directory exists only once it is complete
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        prev = latest_checkpoint(run_dir, verify=False)
        kept = f"the last checkpoint on disk, {prev.name}, is intact" if prev else "no earlier checkpoint exists"
        raise SelfRLError(f"saving checkpoint {final.name} failed: {reason}; {kept}") from None
    shutil.rmtree(final.with_name(final.name + ".trash"), ignore_errors=True)
    return final


def verify_checkpoint(ckpt: Path) -> str | None:
    """None when every file listed in meta.json is present with its recorded SHA-256; else what is wrong."""
    try:
        meta = json.loads((Path(ckpt) / "meta.json").read_text())
    except (OSError, ValueError) as e:
        return f"meta.json unreadable ({e})"
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return "meta.json lists no file checksums"
    for rel, digest in files.items():
        path = Path(ckpt) / rel
        if not path.is_file():
            return f"{rel} is missing"
        if _sha256(path) != digest:
            return f"{rel} does not match its checksum"
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step_* directories (renamed into place, meta.json present), oldest first."""
    found = [p for p in Path(run_dir).glob("step_*") if _STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: Path, verify: bool = True) -> Path | None:
    """The newest checkpoint; with verify, the newest whose checksums hold, warning about each one skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(ckpt) if verify else None
        if problem is None:
            return ckpt
        log.warning("checkpoint %s is corrupt (%s); falling back to the previous one", ckpt, problem)
    return None


def meta_value(run_dir: Path, step: int | None, key: str) -> float:
    """A number recorded in step_<step>/meta.json (e.g. "val/accuracy"); -inf when there is none."""
    if step is None:
        return -math.inf
    try:
        value = json.loads((step_dir(run_dir, step) / "meta.json").read_text()).get(key)
        return -math.inf if value is None else float(value)
    except (OSError, ValueError, TypeError):
        return -math.inf


def read_pointers(run_dir: Path) -> dict[str, int]:
    """{name: step} of the named checkpoints (best, healthy, promoted, ...); {} when there are none."""
    path = Path(run_dir) / POINTERS
    try:
        return {k: int(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.warning("%s is unreadable (%s); no checkpoint is pinned", path, e)
        return {}


def set_pointer(run_dir: Path, name: str, step: int | None) -> None:
    """Point `name` at step_<step> (None removes it). Retention never deletes a pointed-to checkpoint."""
    pointers = read_pointers(run_dir)
    if step is None:
        pointers.pop(name, None)
    else:
        pointers[name] = int(step)
    write_json_atomic(Path(run_dir) / POINTERS, pointers)


def prune_checkpoints(run_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and the pointed-to ones (None keeps all); clear leftovers
    of interrupted writes and deletes. Returns the checkpoints deleted."""
    run_dir = Path(run_dir)
    for leftover in list(run_dir.glob("step_*.tmp")) + list(run_dir.glob("step_*.trash")):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep_last is None:
        return []
    ckpts = list_checkpoints(run_dir)
    pinned = {step_dir(run_dir, s) for s in read_pointers(run_dir).values()}
    doomed = [p for p in ckpts[: max(len(ckpts) - keep_last, 0)] if p not in pinned]
    for p in doomed:
        trash = p.with_name(p.name + ".trash")
        os.replace(p, trash)  # atomic: the step_* name disappears at once, then the bytes go
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def is_sharded_policy(policy_dir: Path) -> bool:
    """A sharded checkpoint's policy directory: its config and tokenizer, the weights in ../shards."""
    policy_dir = Path(policy_dir)
    return (policy_dir.parent / SHARDS).is_dir() and not any(policy_dir.glob("*.safetensors"))


def _load_policy_state(policy_dir: Path) -> dict:
    """The policy's tensors from model.safetensors, the shards named in model.safetensors.index.json, (LoRA)
    adapter_model.safetensors, or a sharded checkpoint's ../shards, read whole in this process."""
    if is_sharded_policy(policy_dir):
        from selfrl import fsdp

        return fsdp.full_state_dict(Path(policy_dir).parent / SHARDS, "policy")
    if lora.is_adapter_dir(policy_dir):
        return load_file(policy_dir / "adapter_model.safetensors")
    index = policy_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(policy_dir / shard).items()}
    return load_file(policy_dir / "model.safetensors")


def load_checkpoint(ckpt: Path, model, momentum: dict | None, optimizer, scheduler, rng: bool = True,
                    momentum_model=None) -> dict:
    """Restore everything in place; returns meta (step, cursor, ...). rng=False keeps the current RNG streams.
    A sharded checkpoint (shards/) loads into `model` and `momentum_model` however many processes now hold them
    (collective: every process calls it)."""
    sharded = (ckpt / SHARDS).is_dir()
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
        opt = torch.load(ckpt / "optimizer.pt", weights_only=False)
        rng_state = torch.load(ckpt / "rng.pt", weights_only=False)
        if sharded:  # weights, momentum and AdamW state, resharded to this run's processes
            from selfrl import fsdp

            models = {"policy": model, **({"momentum": momentum_model} if momentum_model is not None else {})}
            fsdp.load(ckpt / SHARDS, models, optimizer)
        else:
            state = _load_policy_state(ckpt / "policy")
            saved = load_file(ckpt / "momentum.safetensors") if momentum is not None else None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SelfRLError(f"checkpoint {ckpt} is unreadable: {first}") from None
    if not sharded:
        _set_weights(ckpt, model, state, momentum, saved)
        optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    if rng:
        torch.set_rng_state(rng_state["torch"])
        np.random.set_state(rng_state["numpy"])
        random.setstate(rng_state["python"])
    return meta


def _set_weights(ckpt: Path, model, state: dict, momentum: dict | None, saved: dict | None) -> None:
    """An unsharded checkpoint's policy tensors into `model` and its momentum tensors into `momentum`, checked."""
    if lora.is_peft(model):  # the adapter alone; the frozen base was loaded from the run's `model`
        from peft import set_peft_model_state_dict

        missing, unexpected = [], set_peft_model_state_dict(model, state, adapter_name=lora.POLICY).unexpected_keys
        if not state:
            missing = ["(no adapter weights)"]
    else:  # tied embeddings are stored once; strict=False lets the tied lm_head be absent
        missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise SelfRLError(f"checkpoint {ckpt} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if momentum is not None:
        for k, v in momentum.items():
            v.copy_(saved[k])
