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

from selfrl.core import majority_vote
from selfrl.errors import SelfRLError
from selfrl.evaluate import greedy_accuracy
from selfrl.rollout import encode_prompts, generate


@torch.no_grad()
def sampled_answers(model, tokenizer, task, questions: list[str], k: int, temperature: float, max_new_tokens: int,
                    batch_size: int = 8) -> list[list[str | None]]:
    """k sampled answers per question (pure sampling at `temperature`, the trainer's sampler); the model's
    train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    for i in range(0, len(questions), batch_size):
        batch = encode_prompts(tokenizer, [task.format_prompt(q) for q in questions[i : i + batch_size]], device)
        texts = generate(model, tokenizer, batch, k, max_new_tokens, temperature).texts  # prompt-major rows
        answers.extend([task.extract_answer(t) for t in texts[j * k : (j + 1) * k]] for j in range(len(texts) // k))
    model.train(was_training)
    return answers


def sampled_scores(answers: list[list[str | None]], golds: list[str], is_equivalent) -> dict[str, float]:
    """mean@k: share of all samples whose answer is the gold one; maj@k: share of questions whose majority answer
    (core.majority_vote, ties to the first seen, no answer never wins) is the gold one."""
    k = len(answers[0])
    hits = [sum(a is not None and is_equivalent(a, g) for a in row) for row, g in zip(answers, golds)]
    majority = [majority_vote(row, is_equivalent)[0] for row in answers]
    return {f"mean@{k}": sum(hits) / (k * len(golds)),
            f"maj@{k}": sum(m is not None and is_equivalent(m, g) for m, g in zip(majority, golds)) / len(golds)}


def evaluate_model(model, tokenizer, task, examples: list[tuple[str, str]], k: int = 4, temperature: float = 0.8,
                   max_new_tokens: int = 24, seed: int = 0, batch_size: int = 8) -> dict[str, float]:
    """{"greedy", "mean@k", "maj@k"} on labelled `examples` (question, gold)."""
    greedy, _ = greedy_accuracy(model, tokenizer, task, examples, max_new_tokens, batch_size)
    torch.manual_seed(seed)
    answers = sampled_answers(model, tokenizer, task, [q for q, _ in examples], k, temperature, max_new_tokens,
                              batch_size)
    return {"greedy": greedy, **sampled_scores(answers, [g for _, g in examples], task.is_equivalent)}


def main(argv: list[str] | None = None) -> None:
    from selfrl.cli import resolve_model_dir
    from selfrl.gguf import resolve_model_source
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
    path = resolve_model_dir(resolve_model_source(args.model))
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
