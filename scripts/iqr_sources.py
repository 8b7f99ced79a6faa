"""Whose trajectories does M-GRPO's IQR filter drop: the policy's or the momentum model's? (docs/results.md)

Loads a checkpoint of an mgrpo run (its policy and its momentum weights), samples the run's M policy and N momentum
rollouts on training prompts at the run's temperature with selfrl's own sampler, and applies the filter to the pooled
mean token entropies exactly as the trainer does (selfrl/grpo.py step 2). Prints, per checkpoint, the share of each
model's samples dropped and each model's mean entropy. The logs count drops, not whose they are.

    python scripts/iqr_sources.py runs/study_tuning/mgrpo+iqr-lr1.5e-4-g32-m0.9999-n24/seed_100 --steps 150 1000
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfrl import checkpoint, core
from selfrl.errors import SelfRLError
from selfrl.grpo_config import load_config
from selfrl.rollout import encode_prompts, generate
from selfrl.tasks import load_task


def mean_entropy(model, tokenizer, prompts: list[str], k: int, cfg) -> torch.Tensor:
    """(len(prompts), k) mean token entropy of k samples per prompt, as the trainer records it while sampling."""
    out = generate(model, tokenizer, encode_prompts(tokenizer, prompts, torch.device("cpu")), k,
                   cfg.max_completion_length, cfg.temperature)
    return core.masked_mean(out.entropy, out.response_mask.float(), dim=1).view(len(prompts), k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="an mgrpo run directory (with config.yaml and step_* checkpoints)")
    ap.add_argument("--steps", type=int, nargs="+", required=True, help="checkpoints to read")
    ap.add_argument("--prompts", type=int, default=64, help="training prompts sampled (the first n)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = load_config(args.run / "config.yaml")
    if cfg.method != "mgrpo":
        raise SystemExit(f"{args.run}: method {cfg.method}, not mgrpo (no momentum rollouts to pool)")
    _, _, M, N = cfg.sizes()
    prompts = load_task(cfg.task).train_prompts()[: args.prompts]
    for step in args.steps:
        ckpt = checkpoint.step_dir(args.run, step)
        policy = AutoModelForCausalLM.from_pretrained(ckpt / "policy").eval()
        tokenizer = AutoTokenizer.from_pretrained(ckpt / "policy")
        momentum = copy.deepcopy(policy)
        try:  # the momentum weights into a copy of the policy, with resume's check that they match the model
            checkpoint._set_weights(ckpt, momentum, load_file(ckpt / "momentum.safetensors"), None, None)
        except SelfRLError as e:
            raise SystemExit(str(e)) from None
        torch.manual_seed(args.seed)
        H = torch.cat([mean_entropy(policy, tokenizer, prompts, M, cfg),
                       mean_entropy(momentum, tokenizer, prompts, N, cfg)], dim=1)  # (prompts, M + N) pool order
        drop = ~core.iqr_keep_mask(H, cfg.iqr_k)
        print(f"step {step}: dropped {drop[:, :M].float().mean():.3f} of the policy's samples, "
              f"{drop[:, M:].float().mean():.3f} of the momentum model's; mean entropy policy "
              f"{H[:, :M].mean():.3f}, momentum {H[:, M:].mean():.3f} ({len(prompts)} prompts, {M} + {N} samples)")


if __name__ == "__main__":
    main()
