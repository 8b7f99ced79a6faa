"""Task files for the synthesis tests (loaded through the 'file.py:Class' spec): arith's splits with an answer every
completion has, so a random tiny model's questions can pass the vote and train."""
from tests.gold_tasks import PoisonedGold


class FirstChar(PoisonedGold):
    """The answer is a completion's first non-space character; gold training answers raise when read."""

    def extract_answer(self, completion):
        text = completion.strip() if isinstance(completion, str) else ""
        return text[:1] or None
