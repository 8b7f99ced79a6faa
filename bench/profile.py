"""Where a training step's time goes: `python -m bench.profile [srt|mgrpo] [--model organism] [--steps 6]`.

Runs the real trainer (selfrl.grpo.train) on the bench's shape (B=8 prompts, G=8 samples, T=16 tokens,
beta=0.005) under pyinstrument (`pip install pyinstrument`) and prints the call tree of the steps after the first
(the first step also pays for lazy imports and allocator warm-up) except the last (it also evaluates and saves a
checkpoint), then the share of the measured time spent in
the functions docs/performance.md discusses. The findings there come from this command.
"""
from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (label, function name as pyinstrument reports it, file suffix): their inclusive times are summed over the profile.
PARTS = [
    ("sampling", "generate", "selfrl/rollout.py"),
    ("scoring", "score", "selfrl/rollout.py"),
    ("backward", "backward", "torch/_tensor.py"),
    ("optimizer step", "wrapper", "torch/optim/lr_scheduler.py"),  # the scheduler wraps optimizer.step
    ("EMA update", "ema_update_", "selfrl/core.py"),
    ("extract answers", "extract_answer", "selfrl/tasks/arith.py"),
    ("majority vote", "majority_vote", "selfrl/core.py"),
    ("grad clipping", "clip_grad_norm_", "torch/nn/utils/clip_grad.py"),
    ("metrics log", "log", "selfrl/logger.py"),
]


def inclusive(frame, name: str, file_suffix: str) -> float:
    """Time in the outermost frames matching (name, file) below `frame` (nested calls counted once)."""
    if frame.function == name and (frame.file_path or "").endswith(file_suffix):
        return frame.time
    return sum(inclusive(c, name, file_suffix) for c in frame.children)


def main() -> None:
    from pyinstrument import Profiler

    from bench.models import model_dir
    from bench.worker import selfrl_config
    from selfrl import logger as logger_mod
    from selfrl.grpo import train

    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("method", nargs="?", default="srt", choices=["srt", "mgrpo"])
    ap.add_argument("--iqr", action="store_true")
    ap.add_argument("--model", default="organism", help="organism, qwen2-5m, qwen2-20m or a model directory")
    ap.add_argument("--steps", type=int, default=6, help="steps profiled, after one unprofiled warm-up step")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("-B", type=int, default=8)
    ap.add_argument("-G", type=int, default=8)
    ap.add_argument("-T", type=int, default=16)
    args = ap.parse_args()

    profiler = Profiler(interval=0.0005)
    log = logger_mod.MetricsLogger.log

    def toggled(self, step, metrics):  # steps 2 .. 1 + steps; the last step (evaluation, checkpoint) is not profiled
        out = log(self, step, metrics)
        if step == 1:
            profiler.start()
        elif step == 1 + args.steps:
            profiler.stop()
        return out

    logger_mod.MetricsLogger.log = toggled
    with tempfile.TemporaryDirectory() as out:
        path = args.model if os.path.isdir(args.model) else model_dir(args.model)
        spec = dict(model=path, method=args.method, iqr=args.iqr, warmup=2, steps=args.steps, B=args.B, G=args.G,
                    T=args.T, beta=0.005, threads=args.threads)
        train(selfrl_config(spec, out))
    session = profiler.last_session
    print(profiler.output_text(unicode=True, color=False, show_all=False, time="seconds"))
    root = session.root_frame()
    total = session.duration
    print(f"{args.method}{' +IQR' if args.iqr else ''}, {args.model}, B={args.B} G={args.G} T={args.T}: "
          f"{args.steps} steps in {total:.3f} s ({total / args.steps * 1e3:.1f} ms/step)")
    for label, name, path in PARTS:
        t = inclusive(root, name, path)
        print(f"  {label:<16} {t / args.steps * 1e3:8.2f} ms/step  {100 * t / total:5.1f}%")


if __name__ == "__main__":
    main()
