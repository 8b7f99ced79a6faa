"""How good is a start model's own majority vote? The ceiling of any majority-vote self-reward (docs/results.md).

For a model on a task's labelled split: greedy accuracy, mean@G (the mean accuracy of G samples at temperature T)
and maj@G (the accuracy of their majority vote), overall and on the prompts whose majority share clears a threshold
(what the online filter and the curriculum keep). One markdown row per (T, G). Gold answers are read here for
measurement only.

    SELFRL_CACHE=... python scripts/vote_ceiling.py                                   # organism on arith's val
    python scripts/vote_ceiling.py --model organism2 --task sums --temperature 1.0 -G 8
    python scripts/vote_ceiling.py --model organism2 --task sums --split sft-holdout  # design-time: never val

`--split sft-holdout` measures on the held-out part of the task's SFT split (selfrl/organism.py `sft_holdout`), the
part an organism is designed on.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from selfrl import core
from selfrl.evaluate import greedy_accuracy, sampled_completions
from selfrl.models import load_model
from selfrl.organism import resolve_organism, sft_holdout, task_sft_pairs
from selfrl.tasks import load_task

HEADER = ("| model | task, split (n) | T | G | greedy | mean@G | maj@G | maj − greedy | maj − mean "
          "| share ≥ 0.6: kept, vote acc | easiest third: vote acc, greedy acc |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism", help="organism, organism2, organism:TASK, or a model directory")
    ap.add_argument("--task", default="arith")
    ap.add_argument("--split", default="val", help="val, test, or sft-holdout")
    ap.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.7])
    ap.add_argument("-G", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the organism's own, else 12")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = load_task(args.task)
    path = resolve_organism(args.model)
    model, tok = load_model(path, torch.device("cpu"))
    model.eval()
    meta = Path(path) / "organism.json"
    new_tokens = args.max_new_tokens or (json.loads(meta.read_text()).get("max_new_tokens", 12) if meta.is_file() else 12)
    examples = sft_holdout(task, task_sft_pairs(task)) if args.split == "sft-holdout" else task.eval_examples(args.split)
    golds = [a for _, a in examples]
    greedy, greedy_texts = greedy_accuracy(model, tok, task, examples, new_tokens)
    greedy_right = np.array([correct(task, t, a) for t, a in zip(greedy_texts, golds)])
    print(HEADER)
    for T in args.temperature:
        for G in args.G:
            torch.manual_seed(args.seed)
            texts = sampled_completions(model, tok, [task.format_prompt(q) for q, _ in examples], G, new_tokens, T)
            votes = [core.majority_vote([task.extract_answer(t) for t in row], task.is_equivalent) for row in texts]
            right = np.array([v is not None and task.is_equivalent(v, a) for (v, _), a in zip(votes, golds)])
            share = np.array([s for _, s in votes])
            mean = np.mean([correct(task, t, a) for row, a in zip(texts, golds) for t in row])
            keep = share >= 0.6
            third = share >= np.quantile(share, 2 / 3)
            print(f"| {args.model} | {args.task}, {args.split} ({len(examples)}) | {T} | {G} | {greedy:.3f} | {mean:.3f} "
                  f"| {right.mean():.3f} | {right.mean() - greedy:+.3f} | {right.mean() - mean:+.3f} "
                  f"| {keep.mean():.2f}, {right[keep].mean() if keep.any() else float('nan'):.3f} "
                  f"| {right[third].mean():.3f}, {greedy_right[third].mean():.3f} |")


def correct(task, completion: str, gold: str) -> bool:
    answer = task.extract_answer(completion)
    return answer is not None and task.is_equivalent(answer, gold)


if __name__ == "__main__":
    main()
