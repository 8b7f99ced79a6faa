"""train_file: JSONL / Parquet / CSV / hub training prompts replace the task's own; answers in the file reach only
oracle and diagnostics."""
from __future__ import annotations

import json

import pytest

from selfrl.grpo_config import load_config
from selfrl.data import TrainFileTask, read_jsonl, read_prompts
from selfrl.errors import TaskError
from selfrl.logger import read_metrics
from selfrl.tasks import load_task
from selfrl.grpo import train
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


@pytest.mark.parametrize("method,answers,ext", [("srt", False, "jsonl"), ("oracle", True, "jsonl"),
                                                ("oracle", True, "parquet")])
def test_training_draws_prompts_from_the_file(tiny_model_dir, tmp_path, method, answers, ext):
    data = write_rows(tmp_path / "d.jsonl", answers)
    if ext == "parquet":
        data = write_table(tmp_path / "d.parquet", {"prompt": QUESTIONS, "answer": ANSWERS})
    run = tmp_path / "run"
    train(load_config(None, tiny_sets(tiny_model_dir, run, method=method, train_file=str(data), max_steps=3)))
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # 3 steps x 4 prompts from a 4-prompt file: the cursor went through the file three times
    assert json.loads((run / "step_000003" / "meta.json").read_text())["cursor"] == 12
    assert ("reward/true" in rows[1]) == answers  # diagnostics exist exactly when the file has answers


# ------------------------------------------------------------------------------------------- Parquet, CSV, hub ids
ANSWERS = ["66", "165", "63", "240"]  # the sums of QUESTIONS, by hand: 11+22+33, 44+55+66, 12+21+30, 70+80+90


def write_table(path, columns: dict):
    """A Parquet or CSV file (by extension) holding these columns, written with pandas."""
    import pandas as pd

    frame = pd.DataFrame(columns)
    frame.to_parquet(path) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_tabular_prompts_and_answers(tmp_path, ext):
    task = TrainFileTask(load_task("arith"), write_table(tmp_path / f"d.{ext}", {"prompt": QUESTIONS, "answer": ANSWERS}))
    assert task.train_prompts() == QUESTIONS
    assert task.train_answers() == ANSWERS


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_tabular_without_answer_column_has_no_gold(tmp_path, ext):
    task = TrainFileTask(load_task("arith"), write_table(tmp_path / f"d.{ext}", {"prompt": QUESTIONS, "id": [1, 2, 3, 4]}))
    assert task.train_prompts() == QUESTIONS
    with pytest.raises(TaskError, match="no 'answer' fields"):
        task.train_answers()


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_custom_columns(tmp_path, ext):
    """MATH-style columns: prompt_column/answer_column point at them; the other columns are ignored."""
    cols = {"problem": ["What is $1+1$?", "Compute $2 \\cdot 3$."], "solution": ["2", "6"], "level": [1, 2]}
    path = tmp_path / f"d.{ext}"
    if ext == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(cols, row))) + "\n" for row in zip(*cols.values())))
    else:
        write_table(path, cols)
    prompts, answers = read_prompts(path, prompt_column="problem", answer_column="solution")
    assert prompts == cols["problem"] and answers == ["2", "6"]
    with pytest.raises(TaskError, match=r"no column 'question'|field 'question' must be a non-empty string"):
        read_prompts(path, prompt_column="question")
    with pytest.raises(TaskError, match="answer_column|no column 'answer'"):
        read_prompts(path, prompt_column="problem", answer_column="answer")  # a named answer column must exist


def test_csv_answers_stay_text(tmp_path):
    """CSV type inference would read 0.50 as 0.5, 007 as 7 and NA as a missing value; answers are compared as text."""
    path = tmp_path / "d.csv"
    path.write_text('prompt,answer\n"1,5+1=",0.50\nx=,007\ny=,NA\n')
    prompts, answers = read_prompts(path)
    assert prompts == ["1,5+1=", "x=", "y="]  # a quoted comma stays inside the prompt
    assert answers == ["0.50", "007", "NA"]


@pytest.mark.parametrize("name,content,pattern", [
    ("e.parquet", b"", r"e\.parquet: the file is empty"),
    ("e.csv", b"", r"e\.csv: the file is empty"),
    ("h.csv", b"prompt,answer\n", r"h\.csv: the file has no data rows"),
    ("g.parquet", b"not parquet at all", r"g\.parquet: cannot read as Parquet \(ArrowInvalid: "),
    ("d.json", b'{"prompt": "1+2+3="}\n', r"d\.json: unsupported dataset file; train_file takes \.jsonl, \.parquet, \.csv"),
])
def test_unreadable_files_are_one_line(tmp_path, name, content, pattern):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TaskError, match=pattern) as e:
        read_prompts(tmp_path / name)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_bad_rows_name_the_row(tmp_path, ext):
    path = write_table(tmp_path / f"d.{ext}", {"prompt": ["1+2+3=", " ", "4+5+6="], "answer": ["6", "", "15"]})
    with pytest.raises(TaskError, match=rf"d\.{ext} row 2: column 'prompt' must be a non-empty string"):
        read_prompts(path)
    path = write_table(tmp_path / f"p.{ext}", {"prompt": ["1+2+3=", "4+5+6="], "answer": ["6", None]})
    with pytest.raises(TaskError, match=rf"p\.{ext} row 2: no answer in column 'answer', but other rows have one"):
        read_prompts(path)
    path = write_table(tmp_path / f"n.{ext}", {"question": ["1+2+3="]})
    with pytest.raises(TaskError, match=rf"n\.{ext}: no column 'prompt' \(columns: question\); set prompt_column"):
        read_prompts(path)


def test_missing_local_files(tmp_path):
    with pytest.raises(TaskError, match=r"dataset file not found: .*nope\.parquet"):
        read_prompts(tmp_path / "nope.parquet")
    with pytest.raises(TaskError, match=r"dataset file not found: .*no_such_dir/prompts"):
        read_prompts(tmp_path / "no_such_dir" / "prompts")  # not org/name: never sent to the hub


def test_hub_failure_is_one_line_and_fast(monkeypatch):
    """No hub here: offline mode makes `datasets` fail at once, and the failure is one TaskError line."""
    import time

    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    with pytest.raises(TaskError, match=r"train_file 'nobody-selfrl/no-such-set:test' is no local file, and loading "
                                        r"it as a hub dataset failed: \w+") as e:
        read_prompts("nobody-selfrl/no-such-set:test")
    assert "\n" not in str(e.value) and time.monotonic() - t0 < 30


def test_hub_id_passes_name_config_and_split(monkeypatch):
    """org/name:config:split reaches load_dataset as (name, config, split=...); the rows come back as prompts."""
    import datasets

    calls = []

    def fake_load(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"question": ["1+2+3="], "answer": ["6"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert read_prompts("org/gsm:main:test", prompt_column="question") == (["1+2+3="], ["6"])
    assert read_prompts("org/gsm", prompt_column="question")[0] == ["1+2+3="]
    assert calls == [("org/gsm", "main", "test"), ("org/gsm", None, "train")]
