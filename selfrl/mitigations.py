"""SRT's mitigations that need the frozen start model's votes (arXiv 2505.21444, methods.md §2), label-free.

  * offline labels: every training prompt's pseudo-label is voted once by the start model, stored, and trained
    against (the target cannot drift with the policy);
  * curriculum: keep the easiest fraction of the prompts, "easy" meaning a high majority share under the start
    model (the paper's label-free proxy for difficulty; 1/3 in the paper).

Both read one pass of `start_votes` samples per prompt, written to `start_votes.json` in the run directory so a
resume reuses it instead of sampling again. Gold answers are not read here.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from selfrl import core
from selfrl.checkpoint import write_json_atomic
from selfrl.rollout import encode_prompts, generate, own_rng

log = logging.getLogger("selfrl")


@torch.no_grad()
def start_model_votes(model, tokenizer, task, prompts: list[str], n_votes: int, max_new_tokens: int,
                      temperature: float, seed: int, run_dir: Path, batch_prompts: int = 64,
                      progress: bool = True) -> tuple[list[str | None], list[float]]:
    """(label, majority share) per training prompt under the model as it is now (call before any update)."""
    path = Path(run_dir) / "start_votes.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data["n_votes"] == n_votes and len(data["labels"]) == len(prompts):
            return data["labels"], data["shares"]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    labels, shares = [], []
    with own_rng(device, int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(seed)))):
        for i in tqdm(range(0, len(prompts), batch_prompts), desc="start-model votes", disable=not progress):
            chunk = prompts[i : i + batch_prompts]
            batch = encode_prompts(tokenizer, [task.format_prompt(p) for p in chunk], device)
            texts = generate(model, tokenizer, batch, n_votes, max_new_tokens, temperature).texts
            for j in range(len(chunk)):
                _, label, share = core.vote_texts(texts[j * n_votes : (j + 1) * n_votes], task.extract_answer,
                                                  task.is_equivalent)
                labels.append(label)
                shares.append(share)
    model.train(was_training)
    write_json_atomic(path, {"n_votes": n_votes, "labels": labels, "shares": shares})
    log.info("start-model votes: %d prompts x %d samples, mean majority share %.3f", len(prompts), n_votes,
             sum(shares) / max(len(shares), 1))
    return labels, shares


def easiest(shares: list[float], fraction: float) -> list[int]:
    """Indices of the `fraction` of prompts with the highest start-model majority share (ties: lower index first)."""
    k = max(1, round(fraction * len(shares)))
    order = sorted(range(len(shares)), key=lambda i: (-shares[i], i))
    return sorted(order[:k])
