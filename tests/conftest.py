"""Shared fixtures: a tiny organism (SFT'd just long enough to emit the answer format) saved with save_pretrained."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            sft_max_steps=120, sft_eval_every=60, target_accuracy=1.1, sft_learning_rate=3e-3)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A ~40k-parameter Qwen2 organism on disk; it writes well-formed but mostly wrong answers (rewards vary)."""
    from selfrl.organism import OrganismSpec, train_organism

    out = tmp_path_factory.mktemp("tiny_model")
    train_organism(OrganismSpec(**TINY), out, progress=False)
    return out


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """torch's thread count is process-wide and a run with torch_threads (the bench workers use 1) sets it; CPU
    matmuls round differently at another thread count, so a later in-process run would no longer match the same run
    in a fresh subprocess bit for bit (test_crash_resume compares exactly that)."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_sets(model_dir: Path, out_dir: Path, **extra) -> list[str]:
    """--set pairs for a 2-step run on the tiny model."""
    sets = dict(model=str(model_dir), task="arith", output_dir=str(out_dir), max_steps=2, prompts_per_step=4,
                num_generations=4, num_votes=6, max_completion_length=12, learning_rate=1e-2, eval_every=1,
                eval_limit=16, save_every=1, progress="false", report_to="none", beta=0.0,
                lr_scheduler_type="constant", warmup_ratio=0.0, temperature=1.0)
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def policy_weights(ckpt: Path) -> dict:
    """The policy tensors of a step_* checkpoint."""
    from safetensors.torch import load_file

    return load_file(ckpt / "policy" / "model.safetensors")


def same_tensors(a: dict, b: dict) -> bool:
    """Bit-identical tensor dicts (same keys, same values)."""
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
