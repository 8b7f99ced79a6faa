"""A user task whose text arith's organism cannot read (lower-case letters and '>'): write a 3-letter word
backwards. `NoWarmup` is the same task without sft_examples()."""
from __future__ import annotations

import random
import string

from selfrl.tasks import Task


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(3)) for _ in range(n)]


class NoWarmup(Task):
    name = "backwards"

    def format_prompt(self, question: str) -> str:
        return question + ">"

    def extract_answer(self, completion: str) -> str | None:
        text = completion.strip()
        return text if text.isalpha() and text.islower() else None

    def train_prompts(self) -> list[str]:
        return _words(64, seed=1)

    def train_answers(self) -> list[str]:
        return [w[::-1] for w in self.train_prompts()]

    def eval_examples(self, split: str) -> list[tuple[str, str]]:
        return [(w, w[::-1]) for w in _words(16, seed={"val": 2, "test": 3}[split])]


class Backwards(NoWarmup):
    def sft_examples(self) -> list[tuple[str, str]]:
        return [(w, w[::-1]) for w in _words(400, seed=4)]
