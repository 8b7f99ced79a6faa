"""Task `wordarith`: one-step arithmetic word problems in plain English, for a small pretrained chat model.

    question:   "Mia has 7 apples. She buys 5 more apples. How many apples does Mia have now?
                 Answer with just the number."
    completion: "Mia has 12 apples."       (the answer is the LAST integer in the completion)

Written for SmolLM2-135M-Instruct (`model: smollm2`, selfrl/gguf.py): the closing instruction is what its chat
template's user turn answers best with a short reply, and the numbers (2..20) keep the problems within reach of a
135M model without making them easy. The issue that introduced it measured the bare form "What is a + b? Answer
with just the number." at greedy 0.300, one sample at T 0.8 0.158, maj@8 0.300 (issue 22): sampling well below
consensus, the regime label-free RL feeds on.

Six templates: addition (buy more, two groups, receive) and subtraction (give away, eat, lose), the smaller number
always taken from the larger so every answer is a non-negative integer. Generated from a fixed seed; splits never
share a question. Splits: `train` (unlabelled for label-free methods), `val` and `test` (labelled, evaluation and
diagnostics only).
"""
from __future__ import annotations

import random
import re

from selfrl.tasks import SplitTask, unique_splits

SPLIT_SIZES = {"train": 2000, "val": 200, "test": 500}
DATA_SEED = 20260122
INSTRUCTION = "Answer with just the number."
NAMES = ("Mia", "Tom", "Ava", "Sam", "Lily", "Ben", "Zoe", "Max", "Emma", "Leo", "Nora", "Jack")
SHE = {"Mia", "Ava", "Lily", "Zoe", "Emma", "Nora"}
THINGS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "balloons", "cards", "shells")
# (template, op): {n} name, {p} pronoun, {x} thing, {a} first number, {b} second number
TEMPLATES = (
    ("{n} has {a} {x}. {P} buys {b} more {x}. How many {x} does {n} have now?", "+"),
    ("{n} has {a} {x} and {m} has {b} {x}. How many {x} do they have together?", "+"),
    ("{n} had {a} {x}. {m} gave {o} {b} more. How many {x} does {n} have now?", "+"),
    ("{n} has {a} {x}. {P} gives {b} {x} to {m}. How many {x} does {n} have left?", "-"),
    ("There are {a} {x} in a box. {n} takes {b} of them. How many {x} are left in the box?", "-"),
    ("{n} had {a} {x} and lost {b} of them. How many {x} does {n} have now?", "-"),
)
# re.ASCII: \d would otherwise take other scripts' digits, which int() quietly accepts (as in tasks/arith.py).
_INT = re.compile(r"-?\d+", re.ASCII)


def _problem(rng: random.Random) -> tuple[str, str]:
    template, op = rng.choice(TEMPLATES)
    n, m = rng.sample(NAMES, 2)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    if op == "-" and a < b:
        a, b = b, a
    she = n in SHE
    text = template.format(n=n, m=m, x=rng.choice(THINGS), a=a, b=b, P="She" if she else "He", o="her" if she else "him")
    return text, str(a + b if op == "+" else a - b)


def make_splits(seed: int = DATA_SEED) -> dict[str, list[tuple[str, str]]]:
    """{split: [(question, answer)]} with no question in two splits."""
    return unique_splits(SPLIT_SIZES, _problem, seed)


class WordArithTask(SplitTask):
    name = "wordarith"

    def __init__(self) -> None:
        self._splits = make_splits()

    def format_prompt(self, question: str) -> str:
        return f"{question} {INSTRUCTION}"

    def extract_answer(self, completion: str) -> str | None:
        # The last integer of the completion ("12", "Mia has 12 apples.", "5 + 7 = 12"); none: no answer.
        # Only the tail is searched: model output is untrusted and may be long (1 MB costs what 256 characters do).
        if not isinstance(completion, str):
            return None
        found = _INT.findall(completion[-256:])
        return str(int(found[-1])) if found else None

    def is_equivalent(self, a: str, b: str) -> bool:
        return a.strip() == b.strip()
