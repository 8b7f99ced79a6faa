"""Greedy accuracy on a labelled split: the only place (with `oracle` and diagnostics) where gold answers are read."""
from __future__ import annotations

import torch

from selfrl.rollout import encode_prompts, generate


@torch.no_grad()
def greedy_accuracy(
    model, tokenizer, task, examples: list[tuple[str, str]], max_new_tokens: int, batch_size: int = 256
) -> tuple[float, list[str]]:
    """Share of examples whose greedy completion's answer is equivalent to the gold answer; also the completions."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, texts = 0, []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = encode_prompts(tokenizer, [task.format_prompt(q) for q, _ in chunk], device)
        out = generate(model, tokenizer, batch, 1, max_new_tokens, greedy=True)
        for (_, gold), text in zip(chunk, out.texts):
            answer = task.extract_answer(text)
            correct += answer is not None and task.is_equivalent(answer, gold)
        texts.extend(out.texts)
    model.train(was_training)
    return correct / max(len(examples), 1), texts
