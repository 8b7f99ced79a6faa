"""What M-GRPO's anchor costs in memory: full-weight EMA vs an EMA of the LoRA adapters alone (issue 5, item 2).

    python scripts/lora_memory.py            # the ~20M-parameter Qwen2 of the benchmark (bench/models.py)
    python scripts/lora_memory.py --model organism

Each configuration runs one mgrpo training step (beta 0.005, so the full-weight run also holds its frozen reference
copy) in a fresh process and reports the bytes of what the trainer holds besides the policy (momentum weights,
reference weights, AdamW state) and the process's peak resident memory. The model's weights are random: memory
does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(model: str, use_peft: bool) -> dict:
    import torch

    from selfrl.grpo_config import Config
    from selfrl.grpo import train
    from selfrl.run import setup

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    with tempfile.TemporaryDirectory() as out:
        cfg = Config(model=model, task="arith", method="mgrpo", use_peft=use_peft, lora_target_modules="all-linear",
                     output_dir=out, max_steps=1, prompts_per_step=2, num_generations=8, max_completion_length=16,
                     temperature=1.0, beta=0.005, eval_every=10**9, eval_limit=1, save_every=0, progress=False,
                     report_to="none", gold_diagnostics=False, torch_threads=1)
        s = setup(cfg)
        row = {
            "base_params": sum(p.numel() for n, p in s.model.named_parameters() if "lora_" not in n),
            "trainable_params": sum(p.numel() for p in s.model.parameters() if p.requires_grad),
            "momentum_bytes": nbytes(s.momentum_state.values()),
            "reference_bytes": nbytes(s.ref.parameters()) if s.ref is not None else 0,
        }
        del s
        torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:  # a fresh run for the step: setup's objects above are gone
        cfg.output_dir = out
        train(cfg)
    # AdamW keeps two fp32 moments per trainable parameter
    row["adam_bytes"] = 2 * 4 * row["trainable_params"]
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2-20m", help="organism, qwen2-5m, qwen2-20m or a model directory")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1] == "lora")), flush=True)
        return
    sys.path.insert(0, ROOT)
    from bench.models import model_dir

    path = model_dir(args.model) if args.model in ("organism", "qwen2-5m", "qwen2-20m") else args.model
    rows = {}
    for kind in ("full", "lora"):
        proc = subprocess.run([sys.executable, __file__, "--child", path, kind], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{kind} run failed:\n{proc.stderr[-2000:]}")
        rows[kind] = json.loads(line[7:])
    mib = 1024 ** 2
    print(f"model {args.model}: {rows['full']['base_params'] / 1e6:.1f}M parameters; mgrpo, beta 0.005, one step\n")
    print("| anchor | trainable params | momentum weights MiB | reference weights MiB | AdamW state MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for kind, label in (("full", "full-weight EMA (+ reference copy)"), ("lora", "LoRA adapter EMA (all-linear, r=16)")):
        r = rows[kind]
        print(f"| {label} | {r['trainable_params'] / 1e6:.2f}M | {r['momentum_bytes'] / mib:.2f} | "
              f"{r['reference_bytes'] / mib:.2f} | {r['adam_bytes'] / mib:.2f} | {r['peak_rss_mib']:.0f} |")
    f, lo = rows["full"], rows["lora"]
    print(f"\nmomentum weights: {f['momentum_bytes'] / lo['momentum_bytes']:.1f}x smaller with adapters; "
          f"peak RSS {f['peak_rss_mib'] - lo['peak_rss_mib']:.0f} MiB lower")


if __name__ == "__main__":
    main()
