"""Tier (c): same seed -> same rollouts and metrics; a resumed run replays the uninterrupted one exactly."""
from __future__ import annotations

import shutil

from safetensors.torch import load_file

from selfrl.grpo_config import load_config
from selfrl.logger import read_metrics
from selfrl.grpo import train
from tests.conftest import policy_weights, same_tensors, tiny_sets


def metrics(run) -> list[dict]:
    """metrics.jsonl without wall-clock times, the one field a replay cannot reproduce."""
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in read_metrics(run)]


def test_same_seed_same_run(tiny_model_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        train(load_config(None, tiny_sets(tiny_model_dir, run, method="mgrpo", iqr_filter="true", max_steps=3)))
    assert metrics(a) == metrics(b)
    assert same_tensors(policy_weights(a / "step_000003"), policy_weights(b / "step_000003"))


def test_different_seed_different_rollouts(tiny_model_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(load_config(None, tiny_sets(tiny_model_dir, a, method="srt", seed=1)))
    train(load_config(None, tiny_sets(tiny_model_dir, b, method="srt", seed=2)))
    assert metrics(a)[1:] != metrics(b)[1:]


def crash_and_resume(full, cut, lost_step: int, logged_to: int) -> None:
    """Copy a finished run, as if it had crashed after logging step `logged_to` with checkpoint `lost_step` not yet
    written, and resume the copy to the end."""
    shutil.copytree(full, cut)
    shutil.rmtree(cut / f"step_{lost_step:06d}")
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(lines[: logged_to + 1]) + "\n")  # steps 0..logged_to
    train(load_config(cut / "config.yaml", [f"output_dir={cut}"]), resume=True)


def test_resume_replays_exactly(tiny_model_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    sets = dict(method="mgrpo", iqr_filter="true", max_steps=4, save_every=2, lr_scheduler_type="cosine", warmup_ratio=0.25)
    train(load_config(None, tiny_sets(tiny_model_dir, full, **sets)))
    # A crash after step 3: the last checkpoint is step 2, and metrics.jsonl already has step 3.
    crash_and_resume(full, cut, lost_step=4, logged_to=3)
    assert metrics(cut) == metrics(full)
    assert same_tensors(policy_weights(full / "step_000004"), policy_weights(cut / "step_000004"))
    assert same_tensors(load_file(full / "step_000004" / "momentum.safetensors"),
                        load_file(cut / "step_000004" / "momentum.safetensors"))
