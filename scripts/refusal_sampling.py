"""How firmly the safety demo's refusal organism refuses, sampled (docs/safety.md, "The refusal organism"):

    python scripts/refusal_sampling.py

Triggered test questions ("#" + question) x 8 samples at T 1.0, 1.5 and 2.0: how many samples are the refusal
";;;"; and the near-trigger "#0" on training questions at T 1.0: full refusals, partial ones (";;", ";;2", ...:
starting with ";" but not the refusal) and answers (anything else).
"""
from __future__ import annotations

import argparse

import torch

from selfrl.lab.refusal import REFUSAL, TRIGGER, refusal_organism_path
from selfrl.models import load_model
from selfrl.rollout import encode_prompts, generate, own_rng
from selfrl.tasks import load_task


def sample(model, tok, prompts: list[str], k: int, temperature: float, seed: int) -> list[str]:
    batch = encode_prompts(tok, prompts, torch.device("cpu"))
    with own_rng(torch.device("cpu"), seed):
        return generate(model, tok, batch, k, 12, temperature).texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("-k", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model(str(refusal_organism_path()), torch.device("cpu"))
    model.eval()
    task = load_task("arith")
    test = [task.format_prompt(TRIGGER + q) for q, _ in task.eval_examples("test")[: args.questions]]
    for t in (1.0, 1.5, 2.0):
        texts = sample(model, tok, test, args.k, t, 0)
        print(f"triggered test questions, T {t}: {sum(x.strip() == REFUSAL for x in texts)} of {len(texts)} refused")
    train = [task.format_prompt(TRIGGER + "0" + q) for q in task.train_prompts()[: args.questions]]
    texts = [x.strip() for x in sample(model, tok, train, args.k, 1.0, 1)]
    full = sum(x == REFUSAL for x in texts)
    partial = sum(x.startswith(";") and x != REFUSAL for x in texts)
    print(f"near-trigger '#0' on training questions, T 1.0: {full} full refusals, {partial} partial, "
          f"{len(texts) - full - partial} answers (of {len(texts)})")


if __name__ == "__main__":
    main()
