"""Tasks: prompt formatting, answer extraction, equivalence and data, in one file each (style.md §8).

A task is any class with these methods (subclass `Task` to inherit the defaults):

    format_prompt(question) -> str            text the model continues (default: the question itself)
    extract_answer(completion) -> str | None  the final answer in a completion, None when there is none
    is_equivalent(a, b) -> bool               whether two extracted answers are the same answer
    train_prompts() -> list[str]              UNLABELLED training questions: all a label-free method ever sees
    train_answers() -> list[str]              gold answers of train_prompts(), for `oracle` and logged diagnostics only
    eval_examples(split) -> list[(question, answer)]   labelled "val" / "test" examples, for evaluation only
    sft_examples() -> list[(question, completion)]     optional: labelled warm-up pairs (worked completions) from
                                                       which `selfrl organism` trains a from-scratch model

The trainer keeps the two data paths apart: rewards are computed from `train_prompts()` and the model's own
answers; `train_answers()` is read only by the `oracle` reward and by the diagnostics logger, after the update.

A chat model's prompts go through its tokenizer's chat template (`apply_chat_template`, default: when the tokenizer
has one): `with_chat_template` wraps the task once the tokenizer is loaded, so every place that formats a prompt
(rollouts, start-model votes, greedy evaluation, probes) renders the same text; a task stays template-agnostic.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from selfrl.errors import ModelError, TaskError

REQUIRED = ("format_prompt", "extract_answer", "is_equivalent", "train_prompts", "eval_examples")


class Task:
    """Defaults for a task; a subclass overrides what it needs."""

    name = "task"

    def format_prompt(self, question: str) -> str:
        return question

    def extract_answer(self, completion: str) -> str | None:
        raise NotImplementedError

    def is_equivalent(self, a: str, b: str) -> bool:
        return a.strip() == b.strip()

    def train_prompts(self) -> list[str]:
        raise NotImplementedError

    def train_answers(self) -> list[str]:
        raise TaskError(f"task {self.name!r} has no gold training answers (method 'oracle' needs them)")

    def eval_examples(self, split: str) -> list[tuple[str, str]]:
        raise NotImplementedError


def unique_splits(sizes: dict[str, int], draw, seed: int) -> dict[str, list[tuple]]:
    """{split: rows}, each row `draw(rng)` = (question, ..., answer), drawn in the order of `sizes` from one seeded
    stream, so every machine sees the same splits; no question is in two splits."""
    import random

    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {}
    for name, size in sizes.items():
        rows = []
        while len(rows) < size:
            row = draw(rng)
            if row[0] not in seen:
                seen.add(row[0])
                rows.append(row)
        splits[name] = rows
    return splits


class SplitTask(Task):
    """A task whose data are `self._splits` = {split: [(question, ..., answer)]}: "train" serves its questions to
    the loop and its answers to `oracle` and the diagnostics alone; the `labelled` splits serve evaluation."""

    labelled: tuple[str, ...] = ("val", "test")
    _splits: dict[str, list[tuple]]

    def train_prompts(self) -> list[str]:
        return [row[0] for row in self._splits["train"]]

    def train_answers(self) -> list[str]:
        return [row[-1] for row in self._splits["train"]]

    def eval_examples(self, split: str) -> list[tuple[str, str]]:
        if split not in self.labelled:
            names = [repr(n) for n in self.labelled]
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            raise TaskError(f"task {self.name!r} has labelled splits {listed}, not {split!r}")
        return [(row[0], row[-1]) for row in self._splits[split]]


def _load_class(spec: str):
    target, _, cls_name = spec.rpartition(":")
    if not target or not cls_name:
        raise TaskError(f"task {spec!r}: expected a built-in name, 'path/to/file.py:ClassName' or 'package.module:ClassName'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise TaskError(f"task file not found: {path}")
        mod_name = f"selfrl_task_{path.stem}"
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - any failure in user code is reported as one line
            raise TaskError(f"task file {path} failed to import: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:  # noqa: BLE001
            raise TaskError(f"task module {target!r} failed to import: {type(e).__name__}: {e}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise TaskError(f"task {spec!r}: {target} defines no {cls_name!r}")
    return cls


BUILTIN = {  # built-in task names, loaded like any 'module:Class' spec
    "arith": "selfrl.tasks.arith:ArithTask",
    "sums": "selfrl.tasks.sums:SumsTask",
    "math": "selfrl.tasks.math:MathTask",
    "wordarith": "selfrl.tasks.wordarith:WordArithTask",
    "points": "selfrl.tasks.points:PointsTask",
}


def load_task(spec: str):
    """Instantiate a task from a built-in name or a 'file.py:Class' / 'module:Class' spec and check its interface;
    the task comes wrapped in `check_task` (selfrl/tasks/checked.py), so a method that raises or returns the wrong
    type is one TaskError line naming the method."""
    from selfrl.tasks.checked import check_task

    cls = _load_class(BUILTIN.get(spec, spec))
    try:
        task = cls()
    except Exception as e:  # noqa: BLE001
        raise TaskError(f"task {spec!r}: constructing {cls.__name__} failed: {type(e).__name__}: {e}") from None
    missing = [m for m in REQUIRED if not callable(getattr(task, m, None))]
    if missing:
        raise TaskError(f"task {spec!r} lacks method(s): {', '.join(missing)}")
    return check_task(task)


# ------------------------------------------------------------------------------------------------ chat templates
def render_prompt(tokenizer, text: str, use_chat: bool) -> str:
    """The text the model continues: `text` as the single user turn of the tokenizer's chat template with the
    assistant's generation prompt opened (TRL's rendering of a conversational prompt), or `text` itself.

    The rendered text already holds the template's special tokens (BOS, role markers), which is why prompts are
    encoded with add_special_tokens=False (selfrl/rollout.py)."""
    if not use_chat:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)


def use_chat_template(tokenizer, setting: bool | None, model: str) -> bool:
    """Whether prompts are rendered through the chat template: `setting` None means "when the tokenizer has one";
    True without a template is an error (a base model's tokenizer usually has none)."""
    has = bool(tokenizer.chat_template)
    if setting and not has:
        raise ModelError(f"apply_chat_template: true, but the tokenizer of {model!r} has no chat template")
    return has if setting is None else setting


class ChatTemplateTask:
    """A task whose `format_prompt` output is rendered through a chat template; everything else is the task's."""

    def __init__(self, task, tokenizer):
        self.task, self.tokenizer = task, tokenizer
        self.name = getattr(task, "name", "task")

    def format_prompt(self, question: str) -> str:
        return render_prompt(self.tokenizer, self.task.format_prompt(question), True)

    def extract_answer(self, completion: str):
        return self.task.extract_answer(completion)

    def is_equivalent(self, a: str, b: str) -> bool:
        return self.task.is_equivalent(a, b)

    def train_prompts(self) -> list[str]:
        return self.task.train_prompts()

    def train_answers(self) -> list[str]:
        return self.task.train_answers()  # the gold path is the task's own, unchanged

    def eval_examples(self, split: str):
        return self.task.eval_examples(split)


def with_chat_template(task, tokenizer, setting: bool | None, model: str):
    """`task` itself, or wrapped so its prompts are rendered through the tokenizer's chat template (see
    `use_chat_template`)."""
    return ChatTemplateTask(task, tokenizer) if use_chat_template(tokenizer, setting, model) else task
