"""No gold label may reach a label-free reward (methods.md §0), tested structurally and behaviourally."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfrl.errors import TaskError
from selfrl.grpo import train
from selfrl.grpo_config import load_config
from tests.conftest import policy_weights, same_tensors, tiny_sets

TASKS = Path(__file__).with_name("gold_tasks.py")


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method,extra", [
    ("srt", {}), ("ttrl", {}), ("mgrpo", {}), ("mgrpo", {"iqr_filter": "true"}), ("intuitor", {}), ("corewarding", {}),
    ("srt", {"offline_labels": "true", "start_votes": 2}), ("srt", {"curriculum_fraction": 0.5, "start_votes": 2}),
    ("srt", {"online_filter": 0.25}),
    ("mgrpo", {"collapse_detector": "rollback", "detector_window": 2, "detector_min_signals": 1, "max_steps": 4}),
])
def test_label_free_methods_never_read_gold(tiny_model_dir, tmp_path, method, extra):
    out = tmp_path / "run"
    train(load_config(None, tiny_sets(tiny_model_dir, out, method=method, task=f"{TASKS}:PoisonedGoldSmall",
                                      gold_diagnostics="false", **extra)))
    assert [r["step"] for r in rows(out)] == list(range(int(extra.get("max_steps", 2)) + 1))


def test_the_loop_holds_no_gold_answers(tiny_model_dir, tmp_path):
    """Structure, not one `if`: a label-free run's task view raises on train_answers; oracle's holds them."""
    from selfrl.errors import TaskError
    from selfrl.run import setup

    s = setup(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "srt", method="srt")))
    with pytest.raises(TaskError, match="label-free"):
        s.task.train_answers()
    assert s.oracle_gold is None and s.task.train_prompts()  # prompts, formatting and evaluation stay readable
    s = setup(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "oracle", method="oracle")))
    assert s.oracle_gold is not None and len(s.oracle_gold) == len(s.prompts)


def test_unlabelled_task_trains_label_free_and_oracle_refuses(tiny_model_dir, tmp_path):
    sets = tiny_sets(tiny_model_dir, tmp_path / "srt", method="srt", task=f"{TASKS}:NoGold")
    train(load_config(None, sets))  # diagnostics switch themselves off: the task has no gold answers
    assert "reward/label_accuracy" not in rows(tmp_path / "srt")[1]
    sets = tiny_sets(tiny_model_dir, tmp_path / "oracle", method="oracle", task=f"{TASKS}:NoGold")
    proc = subprocess.run([sys.executable, "-m", "selfrl", "train", *[a for s in sets for a in ("--set", s)]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("selfrl: error: task")
    assert "has no gold training answers" in proc.stderr and "oracle" in proc.stderr


def test_oracle_on_poisoned_gold_fails_clearly(tiny_model_dir, tmp_path):
    sets = tiny_sets(tiny_model_dir, tmp_path / "o", method="oracle", task=f"{TASKS}:PoisonedGold")
    # the task's own exception, as one line naming the method (selfrl/tasks/checked.py)
    with pytest.raises(TaskError, match="^task method train_answers raised RuntimeError: gold training answers were read$"):
        train(load_config(None, sets))


@pytest.mark.parametrize("method", ["srt", "mgrpo"])
def test_gold_changes_diagnostics_only(tiny_model_dir, tmp_path, method):
    """Same seed, gold answers replaced by unmatchable ones: bit-identical training, diagnostics at exactly 0."""
    true_run, other_run = tmp_path / "true", tmp_path / "other"
    train(load_config(None, tiny_sets(tiny_model_dir, true_run, method=method, max_steps=3)))
    train(load_config(None, tiny_sets(tiny_model_dir, other_run, method=method, max_steps=3,
                                      task=f"{TASKS}:UnreachableGold")))
    a, b = rows(true_run), rows(other_run)
    for ra, rb in zip(a[1:], b[1:]):
        for key in ("reward/pseudo", "loss/pg", "grad/norm", "policy/entropy", "vote/majority_share", "filter/dropped"):
            assert ra[key] == rb[key], key
        assert rb["reward/label_accuracy"] == 0.0 and rb["reward/true"] == 0.0  # diagnostics did read this gold
    assert same_tensors(policy_weights(true_run / "step_000003"), policy_weights(other_run / "step_000003"))
