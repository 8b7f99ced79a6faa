"""Sampling rollouts and scoring them, each prompt run once for all its samples.

A `Rollouts` batch holds prompts left-padded to P tokens followed by responses right-padded to T tokens, the
layout `model.generate` returns. Scoring a batch under a model gives per-token log-probs and entropies of the
response tokens at the sampling temperature (as TRL does, so the gradient is that of the sampling policy).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
from dataclasses import dataclass

import torch

from selfrl.core import self_certainty, token_entropy, token_logprobs


@dataclass
class Rollouts:
    """R rows, prompt-major: row i*k + j is sample j of prompt i (k samples per prompt; R = prompts * k)."""

    input_ids: torch.Tensor  # (R, P+T) prompt (left-padded) + response (right-padded)
    attention_mask: torch.Tensor  # (R, P+T) 1 on real prompt tokens and on response tokens up to EOS
    response_mask: torch.Tensor  # (R, T) 1 on response tokens up to and including the first EOS
    prompt_len: int  # P
    texts: list[str]  # R decoded responses (special tokens removed)
    entropy: torch.Tensor | None = None  # (R, T) entropy of each token's sampling distribution (0 on padding)
    logp: torch.Tensor | None = None  # (R, T) log-prob of each sampled token under the sampling model (0 on padding)
    certainty: torch.Tensor | None = None  # (R, T) self-certainty of each sampling distribution (0 on padding)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]  # (R, T)

    def prompts(self, keep: list[int], k: int) -> "Rollouts":
        """All k samples of the prompts with these indices (rows are prompt-major)."""
        return self.take(torch.tensor([i * k + j for i in keep for j in range(k)], dtype=torch.long))

    def take(self, rows: torch.Tensor) -> "Rollouts":
        """The rows with these indices, in this order."""
        return Rollouts(
            self.input_ids[rows], self.attention_mask[rows], self.response_mask[rows], self.prompt_len,
            [self.texts[i] for i in rows.tolist()],
            *(None if x is None else x[rows] for x in (self.entropy, self.logp, self.certainty)),
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
        *(None if any(getattr(p, f) is None for p in parts) else
          torch.cat([torch.nn.functional.pad(getattr(p, f), (0, T - getattr(p, f).shape[1])) for p in parts])
          for f in ("entropy", "logp", "certainty")),
    )


@contextlib.contextmanager
def own_rng(device: torch.device, seed: int):
    """Inside, torch's global RNG (and CUDA's on a GPU) starts from `seed`; after, the caller's streams are as they
    were: what samples in here (evaluation, the canary, the start-model votes) never moves training's stream."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def encode_prompts(tokenizer, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch (decoder-only generation continues from the right edge)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's own (e.g. a chat model's end of turn),
    as TRL does."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra] if extra is not None else [])
    return sorted(i for i in ids if i is not None)


@functools.lru_cache(maxsize=None)
def _cache_name_of(forward_owner: type) -> str:
    """The name a model class's forward gives its KV cache: `cache` since transformers 5 renamed it (the old name
    warns on every call), `past_key_values` before (pyproject allows transformers>=4.56)."""
    return "cache" if "cache" in inspect.signature(forward_owner.forward).parameters else "past_key_values"


def _cache_arg(model) -> str:
    """The keyword under which `model(...)` takes its KV cache. Wrappers (peft, DDP/FSDP) pass keyword arguments
    through to the transformers model inside, so the name is read from that model's forward. Looked up once per
    generate/score call, outside the per-token loop."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif isinstance(getattr(inner, "module", None), torch.nn.Module):
            inner = inner.module
        else:
            break
    return _cache_name_of(type(inner))


def _prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, k: int, cache_arg: str):
    """Run each prompt once and share it among its k samples: returns (logits of the next token (B*k, V), the KV
    cache expanded to B*k rows, positions (B*k,) of the next token). `model.generate` would run the prompt k times."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    position_ids = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, P) left padding does not shift positions
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids,
                use_cache=True, **{cache_arg: cache}, logits_to_keep=1)
    cache.batch_repeat_interleave(k)
    return out.logits[:, -1].repeat_interleave(k, dim=0), cache, (position_ids[:, -1] + 1).repeat_interleave(k, dim=0)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_batch: dict[str, torch.Tensor],
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    noise: torch.Tensor | None = None,
) -> Rollouts:
    """`num_samples` completions per prompt by pure sampling at `temperature` (top_k=0, top_p=1), or greedy.

    Hand-written rather than `model.generate` (docs/performance.md) because generate can do neither of the two things
    that matter here: (1) each prompt is run once and its KV cache shared by its samples, instead of once per sample;
    (2) rows that have ended are dropped from the batch, instead of being fed padding until the longest ends. It also
    records what the loop reads from the sampling distributions (the entropy for the IQR filter, the log-prob of each
    sampled token, Intuitor's self-certainty), so no forward pass is spent on them.
    The distribution is generate's: softmax(logits / temperature), sampled with torch.multinomial, or, given
    `noise` (B*k, max_new_tokens) of uniforms in [0, 1), by inverting row i's CDF at noise[i, t]: a row's draw then
    depends on its own numbers only, not on the global RNG or the other rows in the batch (the trainer seeds them
    per prompt, so a prompt's rollouts do not depend on how a step's prompts are split across processes).
    """
    prompt_ids, prompt_mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]  # (B, P)
    k, (B, P) = num_samples, prompt_ids.shape
    n, device = B * k, prompt_ids.device
    stop = torch.tensor(eos_ids(model, tokenizer), device=device)
    tokens = torch.full((n, max_new_tokens), tokenizer.pad_token_id, dtype=torch.long, device=device)  # (R, T)
    stats = torch.zeros(3, n, max_new_tokens, device=device)  # (3, N, T): entropy, log-prob, self-certainty
    cache_arg = _cache_arg(model)
    logits, cache, pos = _prefill(model, prompt_ids, prompt_mask, k, cache_arg)
    mask = prompt_mask.repeat_interleave(k, dim=0)  # (A, P+t) A rows still generating
    active = torch.arange(n, device=device)  # (A,) their row numbers
    ended = torch.zeros(n, dtype=torch.bool, device=device)  # (A,)
    steps = 0
    for t in range(max_new_tokens):
        z = logits.float() / (1.0 if greedy else temperature)  # (A, V)
        logp = torch.log_softmax(z, dim=-1)
        if greedy or noise is None:
            nxt = z.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1).squeeze(1)  # (A,)
        else:
            nxt = inverse_cdf(logp.exp(), noise[active, t])
        stats[:, active, t] = torch.stack([-(logp.exp() * logp).sum(-1), logp.gather(1, nxt[:, None]).squeeze(1),
                                           -logp.mean(-1) - math.log(logp.shape[-1])])  # core.self_certainty
        tokens[active, t] = torch.where(ended, tokenizer.pad_token_id, nxt)
        ended |= torch.isin(nxt, stop)
        steps = t + 1
        if bool(ended.all()) or steps == max_new_tokens:
            break
        if int(ended.sum()) * 8 >= len(active):  # drop ended rows once they are 1/8 of the batch (a copy of the cache)
            live = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(live)
            active, mask, pos, nxt, ended = active[live], mask[live], pos[live], nxt[live], ended[live]
        mask = torch.nn.functional.pad(mask, (0, 1), value=1)
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None],
                       use_cache=True, **{cache_arg: cache}).logits[:, -1]
        pos = pos + 1
    resp = tokens[:, :steps]  # (R, T)
    is_eos = torch.isin(resp, stop)
    # Response tokens are those up to and including the first EOS; after it the rows hold padding.
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()  # (R, T)
    resp = resp.masked_fill(after_eos, tokenizer.pad_token_id)
    input_ids = torch.cat([prompt_ids.repeat_interleave(k, dim=0), resp], dim=1)  # (R, P+T)
    attention_mask = torch.cat([prompt_mask.repeat_interleave(k, dim=0), response_mask], dim=1)
    texts = tokenizer.batch_decode(resp.masked_fill(is_eos, tokenizer.pad_token_id), skip_special_tokens=True)
    entropy, logp, certainty = stats[:, :, :steps] * response_mask
    return Rollouts(input_ids, attention_mask, response_mask, P, texts, entropy, logp, certainty)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample i of each row: the first token whose cumulative probability exceeds u·total.  (A, V), (A,) -> (A,).
    The CDF is summed and held in float64: near 1 float32 values are 2^-24 (6e-8) apart, while most of a 150k
    vocabulary has smaller probabilities, so a float32 CDF rounds their intervals to nothing or to several times
    their width (and on CUDA also accumulates in float32). Scaling by the row's total keeps a CDF that ends a little
    off 1 from skewing the last token."""
    cdf = probs.to(torch.float64).cumsum(-1)  # (A, V)
    i = torch.searchsorted(cdf, (u.to(cdf) * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return i.clamp(max=probs.shape[-1] - 1)


def length_buckets(lengths: list[int], overhead: float = 0.05) -> list[list[int]]:
    """Rows grouped by response length so that a forward pass over a group runs only to its own longest response.

    Rows are sorted by length and cut at quartiles where that pays: of the 8 ways to cut at the three quartiles,
    the one with the fewest padded tokens wins, each extra forward call counted as `overhead` of the uncut batch's
    tokens (the per-call cost that dominates small models). Equal lengths give one bucket. Returns row lists.
    """
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    n = len(order)
    cuts = sorted({n * q // 4 for q in (1, 2, 3)} - {0, n})
    best, best_cost = [0, n], math.inf
    for mask in range(1 << len(cuts)):
        edges = [0] + [c for j, c in enumerate(cuts) if mask >> j & 1] + [n]
        padded = sum((b - a) * lengths[order[a]] for a, b in zip(edges, edges[1:]))
        cost = padded + (len(edges) - 2) * overhead * n * lengths[order[0]]
        if cost < best_cost:
            best, best_cost = edges, cost
    return [order[a:b] for a, b in zip(best, best[1:])]


def score_once(model, rollouts: Rollouts, temperature: float = 1.0) -> torch.Tensor:
    """(R, T) per-token log-probs of the response tokens from ONE ordinary forward pass over prompt + response: what
    `score` computes (tests/test_rollout.py), without its shared prompts and length buckets, whose number of forward
    passes depends on the rows. A sharded (FSDP) model's forward is a collective, so every process must run the same
    number of them: the sharded training pass uses this."""
    P = rollouts.prompt_len
    positions = (rollouts.attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding does not shift positions
    logits = model(input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask, position_ids=positions).logits
    return token_logprobs(logits[:, P - 1 : -1] / temperature, rollouts.response_ids)


def score(model, rollouts: Rollouts, temperature: float = 1.0, prompt_of: torch.Tensor | None = None,
          stats: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token log-probs, entropies and self-certainties of the response tokens under `model` at `temperature`.

    Returns (logp, entropy, certainty), each (R, T); entropy and certainty are detached, and None with
    stats=False: the trainer's passes need log-probs only, and the two statistics each take a softmax-sized
    (n, t, V) temporary, the largest allocation of a pass over a 150k vocabulary. Values on padding are
    meaningless (zero), mask them with response_mask. Runs with or without grad depending on the caller's context.
    Positions come from the attention mask, as in generate, so left padding does not shift them.

    Two savings, neither of which changes the result (tests/test_rollout.py compares with one plain forward pass):
      * `prompt_of` (R,): rows with the same number are samples of the same prompt (identical prompt tokens). Each
        prompt is run once and its KV cache shared by its responses; with grad, its gradient is the sum over them.
      * Responses are right-padded to the longest; rows are grouped by length (`length_buckets`) and each group runs
        only to its own longest response, so padding after EOS costs (almost) nothing.
    """
    from transformers import DynamicCache

    P, T = rollouts.prompt_len, rollouts.response_ids.shape[1]
    ids, mask = rollouts.input_ids, rollouts.attention_mask
    if prompt_of is None:
        prompt_of = torch.arange(len(ids), device=ids.device)
    _, prompt_of = torch.unique(prompt_of, return_inverse=True)  # numbered 0..U-1
    first_row: dict[int, int] = {}
    for row, q in enumerate(prompt_of.tolist()):
        first_row.setdefault(q, row)
    firsts = torch.tensor([first_row[q] for q in range(len(first_row))], device=ids.device)  # a row of each prompt
    cache_arg = _cache_arg(model)
    # (U, V), U rows, (U,) U prompts
    first, cache, pos = _prefill(model, ids[firsts, :P], mask[firsts, :P], 1, cache_arg)
    lengths = rollouts.response_mask.sum(dim=1).clamp(min=1).tolist()
    rows_out, parts = [], []
    for rows in length_buckets(lengths):
        t = lengths[rows[0]]  # the bucket's longest response
        r = torch.tensor(rows, device=ids.device)
        p = prompt_of[r]  # each row's prompt
        logits = first[p][:, None]  # (n, 1, V) predicts response token 0
        if t > 1:
            sub = DynamicCache(config=model.config)
            for layer, kv in enumerate(cache.layers):
                sub.update(kv.keys[p], kv.values[p], layer)
            positions = pos[p, None] + torch.arange(t - 1, device=ids.device)  # (n, t-1)
            rest = model(input_ids=ids[r, P : P + t - 1], attention_mask=mask[r, : P + t - 1], position_ids=positions,
                         **{cache_arg: sub}, use_cache=True).logits  # (n, t-1, V) predicts tokens 1..t-1
            logits = torch.cat([logits, rest], dim=1)  # (n, t, V)
        logits = logits / temperature
        logp = token_logprobs(logits, ids[r, P : P + t])  # (n, t)
        if stats:  # Intuitor's self-certainty: from the temperature-scaled distribution the rollout was sampled from
            detached = logits.detach()
            part = torch.stack([logp, token_entropy(detached), self_certainty(detached)])  # (3, n, t)
        else:
            part = logp[None]  # (1, n, t)
        parts.append(torch.nn.functional.pad(part, (0, T - t)))
        rows_out += rows
    inverse = torch.empty(len(rows_out), dtype=torch.long, device=ids.device)
    inverse[torch.tensor(rows_out, device=ids.device)] = torch.arange(len(rows_out), device=ids.device)
    out = torch.cat(parts, dim=1)[:, inverse]  # (3 or 1, N, T) back in row order
    return (out[0], out[1], out[2]) if stats else (out[0], None, None)
