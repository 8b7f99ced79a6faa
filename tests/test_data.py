"""train_file: JSONL training prompts replace the task's own; answers in the file reach only oracle and diagnostics."""
from __future__ import annotations

import json

import pytest

from selfrl.config import load_config
from selfrl.data import TrainFileTask, read_jsonl
from selfrl.errors import TaskError
from selfrl.logger import read_metrics
from selfrl.tasks import load_task
from selfrl.train import train
from tests.conftest import tiny_sets

QUESTIONS = ["11+22+33=", "44+55+66=", "12+21+30=", "70+80+90="]


def write_rows(path, answers: bool):
    rows = [{"prompt": q, **({"answer": str(sum(map(int, q[:-1].split("+"))))} if answers else {})} for q in QUESTIONS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_prompts_and_answers(tmp_path):
    task = TrainFileTask(load_task("arith"), write_rows(tmp_path / "d.jsonl", answers=True))
    assert task.train_prompts() == QUESTIONS
    assert task.train_answers() == ["66", "165", "63", "240"]
    assert task.extract_answer("1+2=3") == "3"  # the wrapped task's extraction
    assert len(read_jsonl(tmp_path / "d.jsonl")) == 4


def test_without_answers_oracle_has_no_gold(tmp_path):
    task = TrainFileTask(load_task("arith"), write_rows(tmp_path / "d.jsonl", answers=False))
    with pytest.raises(TaskError, match="no 'answer' fields"):
        task.train_answers()


@pytest.mark.parametrize("method,answers", [("srt", False), ("oracle", True)])
def test_training_draws_prompts_from_the_file(tiny_model_dir, tmp_path, method, answers):
    data = write_rows(tmp_path / "d.jsonl", answers)
    run = tmp_path / "run"
    train(load_config(None, tiny_sets(tiny_model_dir, run, method=method, train_file=str(data), max_steps=3)))
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # 3 steps x 4 prompts from a 4-prompt file: the cursor went through the file three times
    assert json.loads((run / "step_000003" / "meta.json").read_text())["cursor"] == 12
    assert ("reward/true" in rows[1]) == answers  # diagnostics exist exactly when the file has answers
