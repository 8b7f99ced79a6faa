"""Built-in task `sums`: sums of four two-digit numbers, worked out along a path of the solver's choosing, every
partial sum written out. Half the warm-up completions add the operands one by one in a random order (a chain), half
add two random pairs and then the pair sums (a tree):

    question:   "47+85+19+33="
    chain:      "85+19=104+47=151+33=184"         (one of 24 orders; the answer follows the last '=')
    tree:       "19+47=66,33+85=118,66+118=184"   (one of 24 orders of 3 pairings)

Why the order varies (issue 14): self-consistency helps when distinct reasoning paths reach the same answer and
their mistakes scatter (Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning"). `arith` answers
each question along one fixed path, so an SFT start repeats its own mistakes in every sample and its majority vote
is no better than its greedy answer. Here each warm-up completion adds the operands in a random order, so the model
learns many paths to one answer: samples at T 1.0 take different paths, carry at different places, err
differently, and the vote over them is right more often than any one path (the regime TTRL, SRT and M-GRPO rely on).
Chains alone were not enough (docs/organism2.md): every chain ends by writing the same final sum, so a sample's
errors were shared by most paths; a tree's last addition (66+118) differs from a chain's (151+33), and with both
shapes the vote measured +0.15 over greedy on the SFT holdout, against +0.04 with chains only.

The data are generated from a fixed seed; splits never share a question. Splits: `sft` (labelled warm-up: worked
completions, `sft_examples()`), `train` (unlabelled for label-free methods), `val` (512 questions: ±0.02 of noise on
an accuracy near 0.4) and `test` (labelled, evaluation only).
"""
from __future__ import annotations

import random

from selfrl.tasks import unique_splits
from selfrl.tasks.arith import ArithTask

SPLIT_SIZES = {"sft": 40000, "train": 4000, "val": 512, "test": 1000, "stop": 400}  # "stop" last: the others unchanged
DATA_SEED = 20260114
OPERANDS = 4


def worked_solution(operands: list[int], order: list[int]) -> str:
    """A chain: the operands added in `order` (indices into `operands`), each partial sum written:
    "85+19=104+47=151+33=184"."""
    total = operands[order[0]]
    text = str(total)
    for i in order[1:]:
        total += operands[i]
        text += f"+{operands[i]}={total}"
    return text


def tree_solution(operands: list[int], order: list[int]) -> str:
    """The first two operands of `order` added, then the last two, then the two sums: "19+47=66,33+85=118,66+118=184"."""
    a, b, c, d = (operands[i] for i in order)
    return f"{a}+{b}={a + b},{c}+{d}={c + d},{a + b}+{c + d}={a + b + c + d}"


def _problem(rng: random.Random) -> tuple[str, str, str]:
    operands = [rng.randint(10, 99) for _ in range(OPERANDS)]
    order = rng.sample(range(OPERANDS), OPERANDS)
    question = "+".join(map(str, operands)) + "="
    worked = worked_solution if rng.random() < 0.5 else tree_solution
    return question, worked(operands, order), str(sum(operands))


def make_splits(seed: int = DATA_SEED) -> dict[str, list[tuple[str, str, str]]]:
    """{split: [(question, worked completion along a random path, answer)]} with no question in two splits."""
    return unique_splits(SPLIT_SIZES, _problem, seed)


class SumsTask(ArithTask):
    """Answers are read and compared as arith's (the final '=<integer>'); only the data differ."""

    name = "sums"

    def __init__(self) -> None:
        self._splits = make_splits()


# ------------------------------------------------------------------------------- question writing (issue 19)
WRITE_SEPARATOR = ";"
"""Ends every question an in-context writing prompt shows: "q;q;q;q;" asks for the next question."""
WRITE_DIRECT = "#"
"""The whole direct writing prompt: a fixed prefix, then a question."""
WRITE_SEED = 20260119


def question_writing_pairs(questions: list[str], num_in_context: int, num_direct: int, num_shots: int = 4,
                           seed: int = WRITE_SEED) -> list[tuple[str, str]]:
    """Warm-up pairs (prompt, question) that teach question writing, questions drawn (seeded) from `questions`:
    in-context, `num_shots` questions each closed by ";" -> a different one ("12+34+56+78=;...;" -> "91+23+45+67=");
    direct, "#" -> a question. No pair holds an answer: the completion is a question and its EOS."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(num_in_context):
        *shown, target = rng.sample(questions, num_shots + 1)
        pairs.append(("".join(q + WRITE_SEPARATOR for q in shown), target))
    pairs += [(WRITE_DIRECT, rng.choice(questions)) for _ in range(num_direct)]
    rng.shuffle(pairs)
    return pairs


class SumsWriterTask(SumsTask):
    """`sums` whose warm-up also teaches writing questions (the question-writing organism, selfrl/organism.py):
    sft_examples() is question_writing_pairs over the sft split's own questions, then sums' worked pairs. Training
    and evaluation are sums' unchanged; the writing pairs come first, so the SFT holdout (the last pairs) is sums'."""

    name = "sums_writer"

    def __init__(self, num_in_context: int = 5000, num_direct: int = 5000) -> None:
        super().__init__()
        self.num_in_context, self.num_direct = num_in_context, num_direct

    def sft_examples(self) -> list[tuple[str, str]]:
        solving = super().sft_examples()
        writing = question_writing_pairs([q for q, _ in solving], self.num_in_context, self.num_direct)
        return writing + solving
