"""The math of label-free GRPO, as small pure functions.

Shape vocabulary (one for every module, docs/architecture.md): B prompts, G pooled voters per prompt (the policy's
samples and the momentum model's), M trained policy rollouts per prompt, N momentum rollouts per prompt, T response
tokens, V vocabulary; a batch of trained rows is B*M rows, written R where one letter reads better.

Nothing here sees a gold answer: the vote and the rewards are functions of the model's own answers only.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def majority_vote(
    answers: Sequence[str | None], is_equivalent: Callable[[str, str], bool], first: int = 0
) -> tuple[str | None, float]:
    """Most common non-None answer among the voters and its share of all voters.

    Answers are grouped into equivalence classes with the task's `is_equivalent` (first-seen representative),
    so "0.5" and "1/2" vote together when the task says they are equal. Ties go to the class seen first, reading
    the voters from index `first` on and then from the start, which keeps the label deterministic for a fixed
    sample order (mgrpo's `vote_ties: momentum` starts at the momentum model's voters). Unparseable answers (None)
    count as voters that agree with nobody: the share is `count / len(answers)` (methods.md §0).
    """
    reps: list[str] = []
    counts: list[int] = []
    for a in [*answers[first:], *answers[:first]]:
        if a is None:
            continue
        for i, r in enumerate(reps):
            if is_equivalent(a, r):
                counts[i] += 1
                break
        else:
            reps.append(a)
            counts.append(1)
    if not reps:
        return None, 0.0
    best = max(range(len(reps)), key=lambda i: (counts[i], -i))
    return reps[best], counts[best] / len(answers)


def vote_texts(
    texts: Sequence[str], extract: Callable[[str], str | None], is_equivalent: Callable[[str, str], bool],
    keep: Sequence[bool] | None = None, first: int = 0,
) -> tuple[list[str | None], str | None, float]:
    """Extract-then-vote, the one place it is written: each voter's answer (`extract`, None when unparseable), then
    the majority vote among the kept voters (all when `keep` is None), ties to the class seen first reading from
    voter `first` on (majority_vote). Returns (answers of all voters, label, share).
    The trainer, the TRL rewards, the start-model votes and the online filter all call this."""
    answers = [extract(t) for t in texts]
    voters = answers if keep is None else [a for a, k in zip(answers, keep) if k]
    if keep is not None:  # `first` indexes all voters; among the kept ones it is the number kept before it
        first = sum(bool(k) for k in keep[:first])
    label, share = majority_vote(voters, is_equivalent, first)
    return answers, label, share


def match_rewards(
    answers: Sequence[str | None], label: str | None, is_equivalent: Callable[[str, str], bool]
) -> list[float]:
    """r_i = 1 if answer i is equivalent to the label, else 0 (no label or no answer: 0)."""
    if label is None:
        return [0.0] * len(answers)
    return [float(a is not None and is_equivalent(a, label)) for a in answers]


def group_advantages(rewards: torch.Tensor, keep: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """A = (r - mean) / (std + eps) within each prompt's group, over kept samples only.

    rewards, keep: (B, M). Dropped samples (keep False) leave the group statistics and get A = 0
    (methods.md §1). std is the unbiased one, as TRL's GRPOTrainer uses; a group with one kept sample has A = 0.
    """
    keep = keep.to(rewards.dtype)
    n = keep.sum(dim=1, keepdim=True)  # (B, 1)
    mean = (rewards * keep).sum(dim=1, keepdim=True) / n.clamp(min=1)
    var = (((rewards - mean) * keep) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
    return (rewards - mean) / (var.sqrt() + eps) * keep  # (B, M)


def iqr_keep_mask(entropy: torch.Tensor, k: float = 0.75) -> torch.Tensor:
    """Keep mask of the M-GRPO IQR filter: per prompt, drop trajectories with H < Q1 - k*(Q3 - Q1).

    entropy: (B, G) mean token entropy per pooled trajectory. Low side only (methods.md §1: the filter removes
    collapsed, over-confident trajectories and keeps exploratory ones). Quantiles use linear interpolation
    (numpy's default), so a hand computation can check them.
    """
    q = torch.quantile(entropy.float(), torch.tensor([0.25, 0.75], device=entropy.device), dim=1)  # (2, B)
    q1, q3 = q[0], q[1]
    lower = q1 - k * (q3 - q1)  # (B,)
    return entropy >= lower.unsqueeze(1)  # (B, G)


@torch.no_grad()
def ema_update_(ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], decay: float) -> None:
    """θk ← decay·θk + (1 − decay)·θq, in place (methods.md §1; once per optimizer step).

    lerp(θk, θq, 1 − decay) = θk + (1 − decay)(θq − θk) is the same update in one fused multi-tensor kernel;
    torch's optimizers use the same `_foreach` family for their own updates.
    """
    torch._foreach_lerp_(list(ema_params), list(params), 1.0 - decay)


def cosine_anneal(step: int, total: int, start: float, end: float) -> float:
    """start -> end along half a cosine over `total` steps: end + (start - end)·(1 + cos(π·t/total))/2, t = step - 1
    clipped to [0, total] (Co-rewarding-II's public code anneals its teacher's update rate this way)."""
    t = max(0, min(step - 1, total))
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t / max(total, 1)))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: logsumexp(z) − Σ p·z.  logits (..., V) -> (...)."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)


def self_certainty(logits: torch.Tensor) -> torch.Tensor:
    """Intuitor's per-token self-certainty KL(Uniform ‖ p) = logsumexp(z) − mean(z) − log V (methods.md §3).

    logits (..., V) -> (...). 0 for a uniform distribution, growing without bound as p concentrates (KL(p ‖ U), not
    this one, is at most log V).
    """
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - logits.mean(dim=-1) - math.log(logits.shape[-1])


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) per position without materialising a full log_softmax copy.  (R, T, V), (R, T) -> (R, T)."""
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (0 when the mask is empty)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π ‖ π_ref) on samples from π: exp(r) − r − 1 with r = ref_logp − logp (≥ 0)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = 0.2,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    n_tokens: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean clipped surrogate (+ beta·k3 KL to the reference), as in GRPO / DAPO's token-level mean.

    logp, old_logp, mask: (R, T); advantages: (R,). Rows whose mask is all zero (filtered trajectories) add
    nothing. With one update per rollout batch old_logp == logp.detach(), the ratio is 1 and the clip is inert,
    but it is kept so that several updates per batch stay correct. `n_tokens` is the token-mean's denominator
    (default: mask.sum()); pass the whole batch's count when these rows are only part of it (rows left out because
    they carry no gradient, or another process's share of the batch).
    """
    n = mask.sum().clamp(min=1) if n_tokens is None else n_tokens
    ratio = torch.exp(logp - old_logp)  # (R, T)
    adv = advantages.unsqueeze(1)  # (R, 1)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    pg = -(surrogate * mask).sum() / n
    kl = (k3_kl(logp, ref_logp) * mask).sum() / n if ref_logp is not None else torch.zeros((), device=logp.device)
    loss = pg + beta * kl
    clipped = ((ratio - 1).abs() > epsilon).to(logp.dtype)
    return loss, {"loss/pg": pg.item(), "loss/kl": kl.item(), "loss/clip_frac": ((clipped * mask).sum() / n).item()}
