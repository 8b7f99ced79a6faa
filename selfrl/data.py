"""Training prompts from a local JSONL file: one {"prompt": ..., "answer": ...} object per line ("answer" optional).

The file is read and checked line by line here rather than through `datasets.load_dataset("json")`: a user with a
50k-line file needs the number of the bad line, which pyarrow's JSON reader does not report.
"""
from __future__ import annotations

import json
from pathlib import Path

from selfrl.errors import TaskError


def read_jsonl(path: str | Path, required: tuple[str, ...] = ("prompt",)) -> list[dict]:
    """The rows of a JSONL file; raises TaskError naming the file and line of the first bad line.

    Every line must be a JSON object whose `required` fields are non-empty strings. A final newline is fine; an
    empty line elsewhere is an error (it usually means a row was lost)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"dataset file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines:
        raise TaskError(f"{path}: the file is empty; expected one JSON object per line")
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            raise TaskError(f"{path} line {n}: empty line; expected a JSON object")
        try:
            row = json.loads(line)
        except ValueError as e:
            raise TaskError(f"{path} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise TaskError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        for key in required:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise TaskError(f"{path} line {n}: field {key!r} must be a non-empty string")
        rows.append(row)
    return rows


class TrainFileTask:
    """A task whose training prompts (and, when every row has one, gold answers) come from a JSONL file; formatting,
    extraction, equivalence and evaluation stay the wrapped task's."""

    def __init__(self, task, path: str | Path):
        self.task, self.path = task, Path(path)
        rows = read_jsonl(self.path)
        self.name = getattr(task, "name", "task")
        self._prompts = [r["prompt"] for r in rows]
        with_answer = ["answer" in r for r in rows]
        self._answers = None
        if any(with_answer):
            if not all(with_answer):
                raise TaskError(f"{self.path} line {with_answer.index(False) + 1}: no 'answer' field, "
                                "but other lines have one; give every line an answer or none")
            self._answers = [str(r["answer"]) for r in rows]

    def format_prompt(self, question: str) -> str:
        return self.task.format_prompt(question)

    def extract_answer(self, completion: str):
        return self.task.extract_answer(completion)

    def is_equivalent(self, a: str, b: str) -> bool:
        return self.task.is_equivalent(a, b)

    def eval_examples(self, split: str):
        return self.task.eval_examples(split)

    def train_prompts(self) -> list[str]:
        return list(self._prompts)

    def train_answers(self) -> list[str]:
        if self._answers is None:
            raise TaskError(f"{self.path} has no 'answer' fields: no gold training answers (method 'oracle' needs them)")
        return list(self._answers)
