"""The canary set: a fixed handful of unlabelled TRAINING prompts the collapse detector watches (issue 15).

Every `detector_every` steps the policy votes on each canary prompt with k samples at the training temperature,
and the detector reads how those votes move. Nothing here holds a gold answer or a validation question: the
canary prompts are drawn from the training prompts, and validation questions among them are refused (tested).

Signals, each a share of canary prompts (or of samples), logged as canary/*:
  flip_rate           the policy's vote changed since the previous check (TTRL-Guard, arXiv 2605.19444: it rises
                      early, then falls before the wrong answer locks in)
  start_contradiction among the prompts where the frozen start model's vote was confident (share >= CONFIDENT),
                      how often the policy's vote now differs from it: a collapsing policy overturns what the start
                      model knew, a learning one mostly keeps it
  anchor_disagreement the policy's vote differs from its anchor's: the momentum model's / EMA teacher's vote
                      (mgrpo, corewarding), for the other methods the start model's vote
  unparseable         samples with no readable answer (format drift)
  length              mean completion length in characters (length drift)
The start model's votes are taken at step 0. Each check's votes go to canary.jsonl in the run directory, so a
resume restores the previous check's votes (the flip rate's reference) exactly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfrl.core import vote_texts
from selfrl.errors import TaskError
from selfrl.evaluate import sampled_completions
from selfrl.rollout import own_rng

CONFIDENT = 0.75  # a start-model vote share at or above this counts as "the start model knew" (ours)


@dataclass
class Votes:
    labels: list[str | None]
    shares: list[float]
    unparseable: float
    length: float


def canary_ids(n_prompts: int, size: int, seed: int) -> list[int]:
    """`size` training-prompt indices, fixed by the seed (the same set on resume and on every process)."""
    rng = np.random.default_rng([seed, 15])
    return sorted(int(i) for i in rng.choice(n_prompts, size=min(size, n_prompts), replace=False))


class Canary:
    def __init__(self, task, prompts: list[str], size: int, k: int, seed: int, run_dir: Path):
        """`prompts`: the run's training prompts, unformatted (the loop's own list)."""
        self.task, self.k, self.seed = task, k, seed
        self.ids = canary_ids(len(prompts), size, seed)
        self.questions = [prompts[i] for i in self.ids]
        val = {q for q, _ in task.eval_examples("val")}
        leaked = [q for q in self.questions if q in val]
        if leaked:  # a training file that repeats validation questions would let the detector read validation
            raise TaskError(f"canary prompt {leaked[0]!r} is also a validation question: training and val overlap")
        self.formatted = [task.format_prompt(q) for q in self.questions]
        self.path = run_dir / "canary.jsonl"
        self.start: Votes | None = None
        self.previous: list[str | None] | None = None

    def vote(self, model, tokenizer, step: int, salt: int, max_new_tokens: int, temperature: float,
             batch_size: int) -> Votes:
        """k samples per canary prompt from `model`, from their own RNG stream (seed, step, salt): training's
        stream never moves."""
        device = next(model.parameters()).device
        with own_rng(device, int(np.random.default_rng([self.seed, step, 15, salt]).integers(2**62))):
            texts = sampled_completions(model, tokenizer, self.formatted, self.k, max_new_tokens, temperature, batch_size)
        labels, shares, none, chars = [], [], 0, 0
        for group in texts:
            answers, label, share = vote_texts(group, self.task.extract_answer, self.task.is_equivalent)
            labels.append(label)
            shares.append(share)
            none += sum(a is None for a in answers)
            chars += sum(len(t) for t in group)
        n = max(1, len(texts) * self.k)
        return Votes(labels, shares, none / n, chars / n)

    def _same(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return self.task.is_equivalent(a, b)

    def disagreement(self, a: list[str | None], b: list[str | None], where: list[bool] | None = None) -> float | None:
        pairs = [(x, y) for i, (x, y) in enumerate(zip(a, b)) if where is None or where[i]]
        return sum(not self._same(x, y) for x, y in pairs) / len(pairs) if pairs else None

    def check(self, step: int, policy: Votes, anchor: Votes | None, seconds: float) -> dict:
        """The canary/* metrics of one check, and its record appended to canary.jsonl (process 0 calls this)."""
        if self.start is None:  # step 0: the start model is the policy
            self.start = policy
        confident = [s >= CONFIDENT and lbl is not None for lbl, s in zip(self.start.labels, self.start.shares)]
        anchor_labels = anchor.labels if anchor is not None else self.start.labels
        out = {
            "canary/flip_rate": self.disagreement(policy.labels, self.previous) if self.previous is not None else None,
            "canary/start_contradiction": self.disagreement(policy.labels, self.start.labels, confident),
            "canary/anchor_disagreement": self.disagreement(policy.labels, anchor_labels),
            "canary/majority_share": float(np.mean(policy.shares)),
            "canary/unparseable": policy.unparseable,
            "canary/length": policy.length,
            "time/canary_s": seconds,
        }
        self.previous = policy.labels
        record = {"step": step, "labels": policy.labels, "shares": policy.shares}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return out

    def restore(self, start_step: int) -> None:
        """Resume: the start model's votes and the last check at or before start_step, read back from canary.jsonl
        (later records belong to the abandoned future and are dropped from the file)."""
        if not self.path.is_file():
            return
        kept = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        kept = [r for r in kept if r["step"] <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if kept:
            first = kept[0]
            self.start = Votes(first["labels"], first["shares"], 0.0, 0.0)
            self.previous = kept[-1]["labels"]
