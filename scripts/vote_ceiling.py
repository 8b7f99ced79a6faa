"""How good is the organism's own majority vote? The ceiling of any majority-vote self-reward (docs/results.md).

For the start organism on arith's validation split: greedy accuracy, per-sample accuracy, and the accuracy of the
majority vote over G samples at temperature T, overall and on the prompts whose majority share clears a threshold
(what the online filter and the curriculum keep). Gold answers are read here for measurement only.

    SELFRL_CACHE=... python scripts/vote_ceiling.py
"""
from __future__ import annotations

import numpy as np
import torch

from selfrl import core
from selfrl.evaluate import greedy_accuracy
from selfrl.models import load_model
from selfrl.organism import organism_path
from selfrl.rollout import encode_prompts, generate
from selfrl.tasks import load_task


def main() -> None:
    task = load_task("arith")
    model, tok = load_model(str(organism_path()), torch.device("cpu"))
    model.eval()
    examples = task.eval_examples("val")
    greedy, greedy_texts = greedy_accuracy(model, tok, task, examples, 12)
    greedy_right = np.array([(x := task.extract_answer(t)) is not None and task.is_equivalent(x, a)
                             for t, (_, a) in zip(greedy_texts, examples)])
    print(f"greedy accuracy {greedy:.3f} on {len(examples)} validation questions")
    print("| T | G | sample acc | majority-vote acc | share >= 0.6: kept, vote acc | easiest third: vote acc, greedy acc |")
    print("|---|---|---|---|---|---|")
    batch = encode_prompts(tok, [task.format_prompt(q) for q, _ in examples], torch.device("cpu"))
    for T in (1.0, 0.7):
        for G in (8, 32):
            torch.manual_seed(0)
            texts = generate(model, tok, batch, G, 12, T).texts
            rows = [[task.extract_answer(t) for t in texts[i * G : (i + 1) * G]] for i in range(len(examples))]
            votes = [core.majority_vote(r, task.is_equivalent) for r in rows]
            right = np.array([v[0] is not None and task.is_equivalent(v[0], a) for v, (_, a) in zip(votes, examples)])
            share = np.array([v[1] for v in votes])
            sample = np.mean([x is not None and task.is_equivalent(x, a) for r, (_, a) in zip(rows, examples) for x in r])
            keep = share >= 0.6
            third = share >= np.quantile(share, 2 / 3)
            print(f"| {T} | {G} | {sample:.3f} | {right.mean():.3f} | {keep.mean():.2f}, {right[keep].mean():.3f} | "
                  f"{right[third].mean():.3f}, {greedy_right[third].mean():.3f} |")


if __name__ == "__main__":
    main()
