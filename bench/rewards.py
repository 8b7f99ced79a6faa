"""Majority-vote reward for TRL (temporary)."""
from selfrl import core
from selfrl.tasks.arith import ArithTask

_task = ArithTask()


def trl_majority_vote(prompts, completions, **kwargs):
    groups = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    out = [0.0] * len(completions)
    for rows in groups.values():
        answers = [_task.extract_answer(completions[i]) for i in rows]
        label, _ = core.majority_vote(answers, _task.is_equivalent)
        for i, a in zip(rows, answers):
            out[i] = float(label is not None and a is not None and _task.is_equivalent(a, label))
    return out
