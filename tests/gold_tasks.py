"""Task files used by the no-gold tests (loaded through the 'file.py:Class' task spec, as a user's would be)."""
from selfrl.tasks import Task
from selfrl.tasks.arith import ArithTask


class PoisonedGold(ArithTask):
    """Training answers raise when touched: a label-free run must never need them."""

    def train_answers(self):
        raise RuntimeError("gold training answers were read")


class PoisonedGoldSmall(PoisonedGold):
    """PoisonedGold on 64 training prompts, so the start model's votes (offline labels, curriculum) take seconds."""

    def train_prompts(self):
        return super().train_prompts()[:64]


class UnreachableGold(ArithTask):
    """Every gold training answer is a string no extracted answer can equal: label-free training must not notice."""

    def train_answers(self):
        return ["not-a-number"] * len(super().train_answers())


class NoGold(ArithTask):
    """A genuinely unlabelled task: it does not override Task.train_answers."""

    train_answers = Task.train_answers  # the base class's "no gold answers" error


class LastDigit(ArithTask):
    """Answers are equivalent when their last digits match: the tiny test model then earns gold rewards too."""

    def is_equivalent(self, a, b):
        return a.strip()[-1:] == b.strip()[-1:]
