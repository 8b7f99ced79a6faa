"""Sampling rollouts and scoring them: one generate call, one forward pass.

A `Rollouts` batch holds prompts left-padded to P tokens followed by responses right-padded to T tokens, the
layout `model.generate` returns. Scoring a batch under a model gives per-token log-probs and entropies of the
response tokens at the sampling temperature (as TRL does, so the gradient is that of the sampling policy).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfrl.core import self_certainty, token_entropy, token_logprobs


@dataclass
class Rollouts:
    """Rows are prompt-major: row i*k + j is sample j of prompt i (k samples per prompt)."""

    input_ids: torch.Tensor  # (N, P+T) prompt (left-padded) + response (right-padded)
    attention_mask: torch.Tensor  # (N, P+T) 1 on real prompt tokens and on response tokens up to EOS
    response_mask: torch.Tensor  # (N, T) 1 on response tokens up to and including the first EOS
    prompt_len: int  # P
    texts: list[str]  # N decoded responses (special tokens removed)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]  # (N, T)

    def prompts(self, keep: list[int], k: int) -> "Rollouts":
        """All k samples of the prompts with these indices (rows are prompt-major)."""
        return self.take(torch.tensor([i * k + j for i in keep for j in range(k)], dtype=torch.long))

    def take(self, rows: torch.Tensor) -> "Rollouts":
        """The rows with these indices, in this order."""
        return Rollouts(
            self.input_ids[rows], self.attention_mask[rows], self.response_mask[rows], self.prompt_len,
            [self.texts[i] for i in rows.tolist()],
        )


def cat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Concatenate batches: prompts left-padded to the longest P, responses right-padded to the longest T."""
    P = max(p.prompt_len for p in parts)
    T = max(p.input_ids.shape[1] - p.prompt_len for p in parts)

    def pad(x: torch.Tensor, p: Rollouts, value: int) -> torch.Tensor:
        t = x.shape[1] - p.prompt_len
        return torch.nn.functional.pad(x, (P - p.prompt_len, T - t), value=value)

    return Rollouts(
        torch.cat([pad(p.input_ids, p, pad_id) for p in parts]),
        torch.cat([pad(p.attention_mask, p, 0) for p in parts]),
        torch.cat([torch.nn.functional.pad(p.response_mask, (0, T - p.response_mask.shape[1])) for p in parts]),
        P,
        [t for p in parts for t in p.texts],
    )


def encode_prompts(tokenizer, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch (decoder-only generation continues from the right edge)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_batch: dict[str, torch.Tensor],
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
) -> Rollouts:
    """`num_samples` completions per prompt with `model.generate` (pure sampling: top_k=0, top_p=1)."""
    ids = prompt_batch["input_ids"].repeat_interleave(num_samples, dim=0)  # (N, P)
    mask = prompt_batch["attention_mask"].repeat_interleave(num_samples, dim=0)
    P = ids.shape[1]
    kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )  # (N, P+T)
    resp = out[:, P:]  # (N, T)
    is_eos = resp == tokenizer.eos_token_id
    # Response tokens are those up to and including the first EOS; after it generate pads.
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()  # (N, T)
    attention_mask = torch.cat([mask, response_mask], dim=1)
    texts = tokenizer.batch_decode(resp.masked_fill(after_eos | is_eos, tokenizer.pad_token_id), skip_special_tokens=True)
    return Rollouts(out, attention_mask, response_mask, P, texts)


def score(model, rollouts: Rollouts, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs, entropies and self-certainties of the response tokens under `model` at `temperature`.

    Returns (logp, entropy, certainty), each (N, T); entropy and certainty are detached; values on padding are meaningless, mask them with response_mask.
    Runs with or without grad depending on the caller's context. Positions come from the attention mask, as in
    generate, so left padding does not shift them.
    """
    position_ids = (rollouts.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask, position_ids=position_ids
    ).logits  # (N, P+T, V)
    P = rollouts.prompt_len
    logits = logits[:, P - 1 : -1] / temperature  # (N, T, V): position t predicts response token t
    # Intuitor's self-certainty is read from the same temperature-scaled distribution the rollout was sampled from.
    detached = logits.detach()
    return token_logprobs(logits, rollouts.response_ids), token_entropy(detached), self_certainty(detached)
