"""Issue 15's canary set: the detector's signals on hand-made votes, its prompts never validation's, its resume."""
from __future__ import annotations

import json

import pytest

from selfrl.canary import CONFIDENT, Canary, Votes, canary_ids
from selfrl.errors import TaskError
from selfrl.tasks import load_task


class FakeTask:
    """Six training prompts; validation holds `val` (questions)."""

    def __init__(self, train, val):
        self.train, self.val = train, val

    def eval_examples(self, split):
        return [(q, "0") for q in self.val]

    def format_prompt(self, q):
        return q

    def extract_answer(self, text):
        return text or None

    def is_equivalent(self, a, b):
        return a == b


def canary(tmp_path, n=6):
    task = FakeTask([f"q{i}" for i in range(n)], ["v0", "v1"])
    return Canary(task, task.train, size=n, k=4, seed=0, run_dir=tmp_path)


def votes(labels, shares=None):
    return Votes(list(labels), list(shares or [0.5] * len(labels)), 0.0, 10.0)


def test_signals_hand_computed(tmp_path):
    c = canary(tmp_path)
    # step 0: the start model; confident (share >= 0.75) on prompts 0, 1 and 2 only
    start = votes("abcdef", [1.0, 0.75, 0.8, 0.5, 0.25, 0.7])
    first = c.check(0, start, None, 0.1)
    assert first["canary/flip_rate"] is None  # nothing to compare with yet
    assert first["canary/start_contradiction"] == 0.0 and first["canary/anchor_disagreement"] == 0.0
    # step 50: prompts 0 and 3 changed their vote; of the confident three, prompt 0 now contradicts the start
    now = votes("Xbc" + "Y" + "ef")
    m = c.check(50, now, None, 0.1)
    assert m["canary/flip_rate"] == pytest.approx(2 / 6)
    assert m["canary/start_contradiction"] == pytest.approx(1 / 3)
    assert m["canary/anchor_disagreement"] == pytest.approx(2 / 6)  # no anchor model: the start model's votes
    # step 100: with an anchor (mgrpo's momentum model) that differs on prompt 5 only; the policy flipped prompt 1
    anchor = votes("XZc" + "Y" + "eQ")
    m = c.check(100, votes("XZcYef"), anchor, 0.1)
    assert m["canary/flip_rate"] == pytest.approx(1 / 6)
    assert m["canary/start_contradiction"] == pytest.approx(2 / 3)
    assert m["canary/anchor_disagreement"] == pytest.approx(1 / 6)


def test_no_answer_counts_as_its_own_vote(tmp_path):
    c = canary(tmp_path, n=2)
    c.check(0, votes([None, "a"], [0.0, 1.0]), None, 0.0)
    m = c.check(50, votes([None, None]), None, 0.0)
    assert m["canary/flip_rate"] == 0.5  # None -> None is no flip; a -> None is one
    assert m["canary/start_contradiction"] == 1.0  # only prompt 1 was confident, and it lost its answer
    assert CONFIDENT == 0.75


def test_canary_never_holds_a_validation_question(tmp_path):
    sums = load_task("sums")
    prompts = sums.train_prompts()
    c = Canary(sums, prompts, size=128, k=2, seed=3, run_dir=tmp_path)
    val = {q for q, _ in sums.eval_examples("val")}
    assert len(c.questions) == 128 and not set(c.questions) & val
    assert c.ids == canary_ids(len(prompts), 128, 3)  # fixed by the seed: the same set on resume
    leaky = FakeTask(["q0", "v1", "q2"], ["v0", "v1"])  # a training file that repeats a validation question
    with pytest.raises(TaskError, match="also a validation question"):
        Canary(leaky, leaky.train, size=3, k=2, seed=0, run_dir=tmp_path)


def test_restore_reads_back_the_checks_up_to_the_resume_step(tmp_path):
    c = canary(tmp_path)
    for step, labels in [(0, "abcdef"), (50, "abcdeX"), (100, "aYcdeX"), (150, "ZYcdeX")]:
        c.check(step, votes(labels, [1.0] * 6), None, 0.0)
    again = canary(tmp_path)
    again.restore(100)  # the run resumes from step 100's checkpoint: step 150's check is the abandoned future
    assert again.start.labels == list("abcdef") and again.previous == list("aYcdeX")
    assert [json.loads(line)["step"] for line in (tmp_path / "canary.jsonl").read_text().splitlines()] == [0, 50, 100]
    # the next check compares with step 100's votes, exactly as the uninterrupted run's did
    assert again.check(150, votes("ZYcdeX"), None, 0.0)["canary/flip_rate"] == c.disagreement(list("ZYcdeX"), list("aYcdeX"))
