"""The one supervised fine-tuning loop: the organisms' warm-ups, the SFT arm of an SFT-vs-RL study, and SEAL's
inner update (a few epochs on a self-edit) and outer update (the generator on its best edits) all call `sft`.

Data are (prompt, completion) pairs; the loss is the mean token cross-entropy over the completion and its EOS
only (the prompt is context, never a target). A pair with an empty prompt trains on the whole text.
Two schedules: `max_steps` random batches drawn with replacement from a seeded generator (the organisms), or
`epochs` passes over a seeded shuffle (SEAL's inner loop: 10 epochs over a handful of lines).
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm


def sft_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion+EOS, labels only on the completion and EOS (-100 elsewhere)."""
    q = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    c = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    seqs = [a + b + [tokenizer.eos_token_id] for a, b in zip(q, c)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)  # (B, T)
    labels = torch.full((len(seqs), width), -100)  # (B, T)
    for i, (s, qi) in enumerate(zip(seqs, q)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, len(qi) : len(s)] = torch.tensor(s[len(qi) :])
    return {"input_ids": ids, "attention_mask": ids != tokenizer.pad_token_id, "labels": labels}


def sft_batches(n: int, batch_size: int, gen: torch.Generator, max_steps: int | None, epochs: int | None):
    """Index lists: max_steps batches drawn with replacement, or `epochs` passes over a fresh shuffle each."""
    if max_steps is not None:
        for _ in range(max_steps):
            yield torch.randint(n, (batch_size,), generator=gen).tolist()
        return
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for lo in range(0, n, batch_size):
            yield order[lo : lo + batch_size]


def sft(model, tokenizer, pairs: list[tuple[str, str]], *, learning_rate: float, batch_size: int,
        max_steps: int | None = None, epochs: int | None = None, seed: int = 0, weight_decay: float = 0.0,
        evaluate: Callable[[], float] | None = None, eval_every: int = 0, stop_at: float | None = None,
        progress: bool = True, desc: str = "SFT") -> dict:
    """Train `model` in place on `pairs` (only its parameters with requires_grad, e.g. a LoRA adapter's).
    Every `eval_every` steps `evaluate()` is called; training stops at the first result >= `stop_at`.
    Returns {"steps", "loss" (last batch), "accuracy" (last evaluation, or None)}."""
    if (max_steps is None) == (epochs is None):
        raise ValueError("sft: give exactly one of max_steps and epochs")
    if not pairs:
        raise ValueError("sft: no training pairs")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    total = max_steps if max_steps is not None else epochs * -(-len(pairs) // batch_size)
    acc, loss, step = None, float("nan"), 0
    bar = tqdm(sft_batches(len(pairs), batch_size, gen, max_steps, epochs), total=total, desc=desc, disable=not progress)
    model.train()
    for step, idx in enumerate(bar, start=1):
        batch = {k: v.to(device) for k, v in sft_batch(tokenizer, [pairs[i] for i in idx]).items()}
        out = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        out.backward()
        opt.step()
        loss = out.item()
        if evaluate is not None and eval_every and step % eval_every == 0:
            acc = evaluate()
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}")
            if stop_at is not None and acc >= stop_at:
                break
    model.eval()
    return {"steps": step, "loss": loss, "accuracy": acc}
