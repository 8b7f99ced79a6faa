"""Accuracy on a labelled split: the only place (with `oracle` and diagnostics) where gold answers are read.

Greedy accuracy, and the M-GRPO paper's sampled evaluation (arXiv 2512.13070; methods.md §1: k samples per question
at T 0.8):
mean@k, the mean accuracy of the k samples (an estimate of one sample's accuracy), and maj@k, the accuracy of their
majority vote (the answer a majority-vote self-reward would call right).
"""
from __future__ import annotations

import torch

from selfrl.errors import SelfRLError
from selfrl.core import majority_vote
from selfrl.rollout import encode_prompts, generate


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 256) -> list[str]:
    """One greedy completion per prompt (already formatted), in batches; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = []
    for i in range(0, len(prompts), batch_size):
        batch = encode_prompts(tokenizer, prompts[i : i + batch_size], device)
        texts.extend(generate(model, tokenizer, batch, 1, max_new_tokens, greedy=True).texts)
    model.train(was_training)
    return texts


def greedy_accuracy(
    model, tokenizer, task, examples: list[tuple[str, str]], max_new_tokens: int, batch_size: int = 256
) -> tuple[float, list[str]]:
    """Share of examples whose greedy completion's answer is equivalent to the gold answer; also the completions.
    Over zero examples the share is undefined, not 0.0: a SelfRLError, so an empty split or a limit of 0 is never
    reported as a model that gets everything wrong (callers that split examples across processes skip empty shares)."""
    if not examples:
        raise SelfRLError("accuracy over zero examples: nothing to score (an empty split, or a limit of 0)")
    texts = greedy_completions(model, tokenizer, [task.format_prompt(q) for q, _ in examples], max_new_tokens, batch_size)
    correct = 0
    for (_, gold), text in zip(examples, texts):
        answer = task.extract_answer(text)
        correct += answer is not None and task.is_equivalent(answer, gold)
    return correct / len(examples), texts



@torch.no_grad()
def sampled_completions(model, tokenizer, prompts: list[str], k: int, max_new_tokens: int, temperature: float,
                        batch_size: int = 256) -> list[list[str]]:
    """k completions per prompt (already formatted) sampled at `temperature`: one list of k texts per prompt.
    Draws from torch's global RNG (seed it for a repeatable measurement); train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    step = max(1, batch_size // k)  # prompts per call, so one call holds about batch_size rows
    for i in range(0, len(prompts), step):
        batch = encode_prompts(tokenizer, prompts[i : i + step], device)
        texts = generate(model, tokenizer, batch, k, max_new_tokens, temperature).texts  # prompt-major rows
        out.extend(texts[j * k : (j + 1) * k] for j in range(len(texts) // k))
    model.train(was_training)
    return out


def _correct(task, completion: str, gold: str) -> bool:
    answer = task.extract_answer(completion)
    return answer is not None and task.is_equivalent(answer, gold)


def mean_at_k(task, completions: list[list[str]], golds: list[str]) -> float:
    """Mean over questions of the share of a question's k completions whose answer is equivalent to its gold answer."""
    per_question = [sum(_correct(task, c, g) for c in texts) / max(len(texts), 1) for texts, g in zip(completions, golds)]
    return sum(per_question) / max(len(per_question), 1)


def maj_at_k(task, completions: list[list[str]], golds: list[str]) -> float:
    """Share of questions whose majority answer over their k completions (core.majority_vote: unparseable answers
    vote for nobody, ties go to the answer seen first) is equivalent to the gold answer; no answer at all is wrong."""
    right = 0
    for texts, gold in zip(completions, golds):
        label, _ = majority_vote([task.extract_answer(t) for t in texts], task.is_equivalent)
        right += label is not None and task.is_equivalent(label, gold)
    return right / max(len(golds), 1)


def sampled_accuracy(model, tokenizer, task, examples: list[tuple[str, str]], k: int, max_new_tokens: int,
                     temperature: float, batch_size: int = 256) -> tuple[float, float, list[list[str]]]:
    """(mean@k, maj@k, the completions) of k samples per example at `temperature`."""
    texts = sampled_completions(model, tokenizer, [task.format_prompt(q) for q, _ in examples], k, max_new_tokens,
                                temperature, batch_size)
    golds = [a for _, a in examples]
    return mean_at_k(task, texts, golds), maj_at_k(task, texts, golds), texts
