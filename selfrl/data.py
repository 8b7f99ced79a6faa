"""Training prompts from a JSONL, Parquet or CSV file, or a hub dataset: a prompt column and an optional answer column.

    prompts.jsonl     one {"prompt": ..., "answer": ...} object per line, read here line by line
    prompts.parquet   read through `datasets.load_dataset("parquet", data_files=...)`
    prompts.csv       read through `datasets.load_dataset("csv", data_files=...)`, every selected column as text
    org/name[:split]  a hub dataset, `datasets.load_dataset("org/name", split=...)` (split default "train");
                      org/name:config:split names a config too

The column names default to "prompt" and "answer" (`prompt_column`, `answer_column`). Answers are optional and only
`oracle` and the logged diagnostics read them (TrainFileTask keeps them apart from the prompts).

JSONL is read and checked by hand rather than through `datasets.load_dataset("json")`: a user with a 50k-line file
needs the number of the bad line, which pyarrow's JSON reader does not report. Parquet and CSV errors name the
1-based data row (the CSV header is not a row).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from selfrl.errors import TaskError


def json_object_lines(text: str, label: str, error: type[Exception] = TaskError):
    """(where, object) for each non-blank line of a JSONL text, `where` being "LABEL:LINE"; a line that is not JSON,
    or not a JSON object, raises `error` naming it. The probe and contexts files read this way; a train_file is
    stricter (read_jsonl: no blank lines, the JSON error's column)."""
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label}:{n}"
        try:
            row = json.loads(line)
        except ValueError:
            raise error(f"{where}: not valid JSON") from None
        if not isinstance(row, dict):
            raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row

FILE_TYPES = (".jsonl", ".parquet", ".csv")
# org/name, optionally :split or :config:split. One slash: a bare "name" is far more often a mistyped local file
# than one of the few legacy un-namespaced hub datasets.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+){0,2}$")


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


def _root_cause(e: BaseException) -> str:
    """'Type: first line' of the innermost explicitly chained exception (`raise ... from e`): `datasets` wraps the
    reader's own error, which names the problem. Implicit context is not followed: it is whatever failed earlier
    while handling (a cache miss before the hub was tried), not the reason."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _has_no_rows(path: Path, kind: str) -> bool:
    """Whether a file `datasets` refused to read holds no data rows (so the message can say so, not quote pyarrow)."""
    try:
        if kind == "csv":
            return sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()) <= 1
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows == 0
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the caller with its own error
        return False


def _load_table(source: str, prompt_column: str, answer_column: str | None):
    """A `datasets.Dataset` from a local Parquet/CSV file or a hub id; every failure is one TaskError line."""
    import datasets

    datasets.disable_progress_bars()
    # datasets logs a failed read at ERROR level before raising; the TaskError below is that report, in one line
    datasets.utils.logging.set_verbosity(logging.CRITICAL)
    path = Path(source)
    kind = path.suffix.lower().lstrip(".")
    if kind in ("parquet", "csv"):
        if not path.is_file():
            raise TaskError(f"dataset file not found: {path}")
        if path.stat().st_size == 0:
            raise TaskError(f"{path}: the file is empty")
        # CSV type inference would turn the answer "0.50" into 0.5 and "007" into 7: read the columns we use as text,
        # and keep "NA" / "null" as the text they are (an empty cell is still a missing answer).
        extra = dict(converters={c: str for c in (prompt_column, answer_column or "answer")},
                     keep_default_na=False) if kind == "csv" else {}
        try:
            return datasets.load_dataset(kind, data_files=str(path), split="train", **extra)
        except Exception as e:  # noqa: BLE001 - pyarrow / pandas raise many types; all mean "cannot read this file"
            if _has_no_rows(path, kind):
                raise TaskError(f"{path}: the file has no data rows") from None
            raise TaskError(f"{path}: cannot read as {kind.upper() if kind == 'csv' else 'Parquet'} ({_root_cause(e)})") from None
    name, _, rest = source.partition(":")
    config, _, split = rest.rpartition(":")
    try:
        return datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:  # noqa: BLE001 - no network, no such dataset, gated, bad split: one line each
        raise TaskError(f"train_file {source!r} is no local file, and loading it as a hub dataset failed: "
                        f"{_root_cause(e)}") from None


def _table_columns(ds, source: str, prompt_column: str, answer_column: str | None) -> tuple[list[str], list[str] | None]:
    """(prompts, answers or None) from a loaded table, each row checked."""
    cols = ds.column_names
    if prompt_column not in cols:
        raise TaskError(f"{source}: no column {prompt_column!r} (columns: {', '.join(cols)}); set prompt_column")
    if answer_column is not None and answer_column not in cols:
        raise TaskError(f"{source}: no column {answer_column!r} (columns: {', '.join(cols)}); set answer_column")
    if len(ds) == 0:
        raise TaskError(f"{source}: the file has no data rows")
    prompts = list(ds[prompt_column])
    for n, p in enumerate(prompts, start=1):
        if not isinstance(p, str) or not p.strip():
            raise TaskError(f"{source} row {n}: column {prompt_column!r} must be a non-empty string, got {p!r:.40}")
    column = answer_column or "answer"
    if column not in cols:
        return prompts, None
    raw = list(ds[column])
    present = [a is not None and str(a).strip() != "" for a in raw]
    if not any(present):
        if answer_column is not None:
            raise TaskError(f"{source}: column {answer_column!r} is empty in every row")
        return prompts, None
    if not all(present):
        raise TaskError(f"{source} row {present.index(False) + 1}: no answer in column {column!r}, but other rows "
                        "have one; give every row an answer or none")
    return prompts, [str(a) for a in raw]


def read_prompts(source: str | Path, prompt_column: str = "prompt",
                 answer_column: str | None = None) -> tuple[list[str], list[str] | None]:
    """(prompts, gold answers or None) from a JSONL / Parquet / CSV file or a hub dataset id (module docstring).

    `answer_column` None reads a column "answer" when there is one; a named answer column must exist."""
    source = str(source)
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = read_jsonl(path, required=(prompt_column,))
        column = answer_column or "answer"
        with_answer = [column in r for r in rows]
        if not any(with_answer):
            if answer_column is not None:
                raise TaskError(f"{path}: no line has an {answer_column!r} field (answer_column)")
            return [r[prompt_column] for r in rows], None
        if not all(with_answer):
            raise TaskError(f"{path} line {with_answer.index(False) + 1}: no {column!r} field, "
                            "but other lines have one; give every line an answer or none")
        return [r[prompt_column] for r in rows], [str(r[column]) for r in rows]
    if suffix in (".parquet", ".csv"):
        return _table_columns(_load_table(source, prompt_column, answer_column), source, prompt_column, answer_column)
    if path.exists():
        raise TaskError(f"{path}: unsupported dataset file; train_file takes {', '.join(FILE_TYPES)} "
                        "or a hub dataset id (org/name[:split])")
    if not _HUB_ID.match(source):
        raise TaskError(f"dataset file not found: {path}")
    return _table_columns(_load_table(source, prompt_column, answer_column), source, prompt_column, answer_column)


class TrainFileTask:
    """A task whose training prompts (and, when every row has one, gold answers) come from `train_file`; formatting,
    extraction, equivalence and evaluation stay the wrapped task's."""

    def __init__(self, task, path: str | Path, prompt_column: str = "prompt", answer_column: str | None = None):
        self.task, self.path = task, str(path)
        self.name = getattr(task, "name", "task")
        self._prompts, self._answers = read_prompts(path, prompt_column, answer_column)

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
