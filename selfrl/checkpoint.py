"""Checkpoints are boring files (style.md §9): step_000120/ with policy weights (HF format), momentum weights,
optimizer + scheduler, RNG states, data cursor and meta.json; written to a temp dir and renamed."""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from selfrl.errors import SelfRLError


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step:06d}"


def save_checkpoint(
    run_dir: Path, step: int, model, tokenizer, momentum: dict | None, optimizer, scheduler, cursor: int
) -> Path:
    final = step_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "policy")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "policy")  # the policy directory loads on its own (eval, export)
    if momentum is not None:
        save_file({k: v.contiguous() for k, v in momentum.items()}, tmp / "momentum.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save(
        {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        tmp / "rng.pt",
    )
    (tmp / "meta.json").write_text(json.dumps({"step": step, "cursor": cursor, "time": time.time()}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a checkpoint directory exists only once it is complete
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in Path(run_dir).glob("step_*") if p.is_dir() and (p / "meta.json").is_file()
                  and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def load_checkpoint(ckpt: Path, model, momentum: dict | None, optimizer, scheduler) -> dict:
    """Restore everything in place; returns meta (step, cursor)."""
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
        state = load_file(ckpt / "policy" / "model.safetensors")
    except (OSError, ValueError) as e:
        raise SelfRLError(f"checkpoint {ckpt} is unreadable: {e}") from None
    # Tied embeddings are stored once; strict=False lets the tied lm_head be absent.
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise SelfRLError(f"checkpoint {ckpt} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if momentum is not None:
        saved = load_file(ckpt / "momentum.safetensors")
        for k, v in momentum.items():
            v.copy_(saved[k])
    opt = torch.load(ckpt / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return meta
