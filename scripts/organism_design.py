"""The SFT trajectory of a task organism, measured on the SFT holdout only: how its greedy accuracy, mean@G and
maj@G at temperature T move during warm-up. This is how organism2's recipe was chosen (docs/organism2.md);
it never reads val or test.

    OMP_NUM_THREADS=1 python scripts/organism_design.py --task sums --max-steps 1500 --out design.jsonl
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from selfrl.evaluate import greedy_accuracy, sampled_accuracy
from selfrl.organism import (ORGANISM2, build_model, build_tokenizer, organism_spec, sft_holdout, task_chars,
                             task_sft_pairs)
from selfrl.sft import sft
from selfrl.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sums")
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of organism2's spec")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("-G", type=int, default=8)
    ap.add_argument("--out", required=True, help="JSONL file, one line per measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = load_task(args.task)
    pairs = task_sft_pairs(task)
    holdout = sft_holdout(task, pairs)  # the same split and training pairs train_task_organism uses
    train_pairs = [(task.format_prompt(q), c) for q, c in pairs[: len(pairs) - len(holdout)]]
    tok = build_tokenizer(task_chars(task, pairs))
    spec = organism_spec(args.set, ORGANISM2)
    model = build_model(spec, len(tok), max_positions=max(64, 2 * (max(len(q) + len(c) for q, c in train_pairs) + 1)))
    new_tokens = max(len(c) for _, c in pairs) + 4
    step, start, f = [0], time.time(), open(args.out, "w")

    def evaluate() -> float:
        step[0] += args.eval_every
        greedy, _ = greedy_accuracy(model, tok, task, holdout, new_tokens)
        torch.manual_seed(0)
        mean, maj, _ = sampled_accuracy(model, tok, task, holdout, args.G, new_tokens, args.temperature)
        row = {"step": step[0], "greedy": greedy, "mean": mean, "maj": maj, "maj-greedy": maj - greedy,
               "maj-mean": maj - mean, "seconds": round(time.time() - start), "cpu_seconds": round(time.process_time())}
        f.write(json.dumps(row) + "\n")
        f.flush()
        return greedy

    sft(model, tok, train_pairs, learning_rate=spec.sft_learning_rate, batch_size=spec.sft_batch_size,
        max_steps=args.max_steps, seed=spec.seed, eval_every=args.eval_every, evaluate=evaluate, progress=False)


if __name__ == "__main__":
    main()
