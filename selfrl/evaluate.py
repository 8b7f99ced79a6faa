"""Greedy accuracy on a labelled split: the only place (with `oracle` and diagnostics) where gold answers are read."""
from __future__ import annotations

import torch

from selfrl.errors import SelfRLError
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
