"""A complete selfrl task file: copy it, change the data and the answer rules, point `task:` at it.

    selfrl train examples/my_task.yaml

Here: sums of three numbers where the last one has one digit, written the way the built-in organism answers
("12+34+5=" -> "46+5=51"), so the organism can be trained on it as is.
"""
import random
import re

from selfrl.tasks import Task

_FINAL = re.compile(r"=\s*(-?\d+)\s*$")


def _make(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(1, 9)
        rows.append((f"{a}+{b}+{c}=", str(a + b + c)))
    return rows


class SmallSums(Task):
    name = "small_sums"

    def format_prompt(self, question: str) -> str:
        return question  # a chat model would wrap the question in its chat template here

    def extract_answer(self, completion: str) -> str | None:
        m = _FINAL.search(completion[-64:])  # parse, never eval: the completion is untrusted model output
        return str(int(m.group(1))) if m else None

    def is_equivalent(self, a: str, b: str) -> bool:
        return a.strip() == b.strip()

    def train_prompts(self) -> list[str]:
        return [q for q, _ in _make(2000, seed=1)]  # unlabelled: label-free methods see only these

    def train_answers(self) -> list[str]:
        return [a for _, a in _make(2000, seed=1)]  # optional: for `oracle` and logged diagnostics only

    def eval_examples(self, split: str) -> list[tuple[str, str]]:
        return _make(200, seed={"val": 2, "test": 3}[split])
