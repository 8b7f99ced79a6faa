"""Held-out scores of a real pretrained model as the M-GRPO paper reports them: greedy, mean@k and maj@k (issue 22).

The trainer's own evaluation is greedy accuracy; the M-GRPO paper evaluates sampled at T 0.8 (methods.md, last
section), and a label-free method's target is to lift mean@k (one sample's accuracy) toward maj@k (the consensus it
trains on). This module measures all three on the same questions, for the start model and for any checkpoint:

    python -m selfrl.lab.real --model smollm2 --task selfrl.tasks.wordarith:WordArithTask --n 30 --k 4
    python -m selfrl.lab.real --model runs/real/mgrpo/seed_0 ...     (a run: its latest checkpoint's policy)

Gold answers are read here and only here (evaluation): nothing in this module feeds a reward.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from selfrl.errors import SelfRLError
from selfrl.evaluate import greedy_accuracy, sampled_accuracy


def evaluate_model(model, tokenizer, task, examples: list[tuple[str, str]], k: int = 4, temperature: float = 0.8,
                   max_new_tokens: int = 24, seed: int = 0, batch_size: int = 8) -> dict[str, float]:
    """{"greedy", "mean@k", "maj@k"} on labelled `examples` (question, gold); the sampled scores are the trainer's own
    (selfrl/evaluate.py `sampled_accuracy`), `batch_size` questions with their k samples per call."""
    greedy, _ = greedy_accuracy(model, tokenizer, task, examples, max_new_tokens, batch_size)
    torch.manual_seed(seed)
    mean, maj, _ = sampled_accuracy(model, tokenizer, task, examples, k, max_new_tokens, temperature, batch_size * k)
    return {"greedy": greedy, f"mean@{k}": mean, f"maj@{k}": maj}


def main(argv: list[str] | None = None) -> None:
    from selfrl.cli import resolve_model_dir
    from selfrl.models import load_model
    from selfrl.tasks import load_task, with_chat_template

    p = argparse.ArgumentParser(prog="python -m selfrl.lab.real", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="smollm2, a .gguf file, a model directory, a run or a step_*")
    p.add_argument("--task", default="selfrl.tasks.wordarith:WordArithTask")
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=30, help="held-out questions (the split's first n)")
    p.add_argument("--k", type=int, default=4, help="samples per question for mean@k and maj@k")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (M-GRPO paper's eval: 0.8)")
    p.add_argument("--max-completion-length", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = resolve_model_dir(args.model)  # smollm2, a .gguf file, a run, a step_* or a directory
    t0 = time.time()
    model, tok = load_model(path, torch.device("cpu"))
    task = with_chat_template(load_task(args.task), tok, None, path)
    examples = task.eval_examples(args.split)[: args.n]
    t1 = time.time()
    scores = evaluate_model(model, tok, task, examples, args.k, args.temperature, args.max_completion_length, args.seed)
    out = {"model": args.model, "path": path, "split": args.split, "n": len(examples), "k": args.k,
           "temperature": args.temperature, **scores, "load_s": round(t1 - t0, 1), "eval_s": round(time.time() - t1, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except SelfRLError as e:  # the user's input: one line, exit 2, as the CLI does
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
