"""Built-in task `arith`: sums of three two-digit numbers, answered with one worked step.

    question:   "47+85+19="
    completion: "132+19=151"        (the partial sum, then the final sum; the answer follows the last '=')

Small enough that a ~1M-parameter character-level transformer learns the format in seconds, hard enough that an
SFT start is a mediocre reasoner (carries across two additions): the regime where majority-vote self-reward can
reinforce its own errors and collapse (methods.md §2). The data are generated from a fixed seed, so every machine
sees the same splits; splits never share a question.

Splits: `sft` (labelled warm-up for the model organism), `train` (unlabelled for label-free methods: the trainer
gets questions only), `val` and `test` (labelled, evaluation and diagnostics only), `stop` (labelled, for early
stopping alone: a checkpoint picked on it is never reported on it).
"""
from __future__ import annotations

import random
import re

from selfrl.tasks import SplitTask, unique_splits

SPLIT_SIZES = {"sft": 20000, "train": 4000, "val": 256, "test": 1000, "stop": 400}  # "stop" last: the others unchanged
DATA_SEED = 20251213
# re.ASCII: without it \d takes fullwidth and other-script digits ("=１５１"), which int() would quietly accept.
_ANSWER = re.compile(r"=\s*(-?\d+)\s*$", re.ASCII)


def _problem(rng: random.Random) -> tuple[str, str, str]:
    a, b, c = (rng.randint(10, 99) for _ in range(3))
    s1 = a + b
    return f"{a}+{b}+{c}=", f"{s1}+{c}={s1 + c}", str(s1 + c)


def make_splits(seed: int = DATA_SEED) -> dict[str, list[tuple[str, str, str]]]:
    """{split: [(question, worked completion, answer)]} with no question in two splits."""
    return unique_splits(SPLIT_SIZES, _problem, seed)


class ArithTask(SplitTask):
    name = "arith"
    labelled = ("val", "test", "stop")

    def __init__(self) -> None:
        self._splits = make_splits()

    def extract_answer(self, completion: str) -> str | None:
        # Only the final '=<integer>' of the completion counts; anything else (junk, no '=') is no answer.
        # Bounded regex on the tail: model output is untrusted and may be long (1 MB costs what 64 chars do). The
        # tail also bounds int() to 63 digits, far below Python's 4300-digit int-string limit and its quadratic cost.
        if not isinstance(completion, str):
            return None
        m = _ANSWER.search(completion[-64:])
        return str(int(m.group(1))) if m else None

    def is_equivalent(self, a: str, b: str) -> bool:
        return a.strip() == b.strip()

    def sft_examples(self) -> list[tuple[str, str]]:
        """Labelled warm-up pairs (question, completion) for the model organism's SFT start."""
        return [(q, c) for q, c, _ in self._splits["sft"]]
