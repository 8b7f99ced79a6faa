"""Ratios that hold up on a shared machine: `python -m bench.interleave [--rounds 4] [--threads 1] [RUN ...]`.

`python -m bench` measures each configuration once, one after another; when other processes come and go, a
configuration measured during a burst of their load looks slower than it is. Here the configurations run in
rounds (srt, mgrpo, ... , srt, mgrpo, ...), each run a fresh worker process as in bench/worker.py, so every
configuration sees the same mix of load, and the reported step time is the median over rounds of each run's
median step. RUN names: srt, mgrpo, mgrpo+iqr, trl (TRL GRPOTrainer, its defaults: gradient checkpointing on),
trl-nogc. The organism, B=8 G=8 T=16, beta 0.005, as in table 1 of python -m bench.
"""
from __future__ import annotations

import argparse
import os
import statistics

from bench.__main__ import measure
from bench.models import model_dir


def spec(run: str, model: str, threads: int, steps: int) -> dict:
    base = dict(model=model, B=8, G=8, T=16, steps=steps, warmup=2, beta=0.005, threads=threads)
    if run.startswith("trl"):
        return dict(kind="trl", gradient_checkpointing=run == "trl", **base)
    return dict(kind="selfrl", method=run.split("+")[0], iqr=run.endswith("+iqr"), **base)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.interleave", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", default=["srt", "mgrpo", "mgrpo+iqr", "trl"])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="measured steps per run, after 2 warm-up steps")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    model = model_dir("organism")
    per_round: dict[str, list[float]] = {r: [] for r in args.runs}
    for k in range(args.rounds):
        for r in args.runs:
            out = measure(spec(r, model, args.threads, args.steps))
            per_round[r].append(statistics.median(out["step_s"]))
            print(f"round {k + 1} {r:<10} {per_round[r][-1]:.3f} s/step  mean response tokens "
                  f"{statistics.mean(out['response_tokens']):.1f}  load {out['load'][0]:.1f} -> {out['load'][1]:.1f}",
                  flush=True)
    med = {r: statistics.median(v) for r, v in per_round.items()}
    print(f"\norganism B=8 G=8 T=16, {args.threads} thread(s), {args.rounds} rounds: median over rounds (min-max)")
    for r in args.runs:
        print(f"  {r:<10} {med[r]:.3f} s/step ({min(per_round[r]):.3f}-{max(per_round[r]):.3f})")
    if "srt" in med:
        for r in args.runs:
            if r != "srt":
                print(f"  {r} / srt = {med[r] / med['srt']:.2f}")
    for t in ("trl", "trl-nogc"):
        if t in med and "srt" in med:
            print(f"  speed-up of srt over {t}: {med[t] / med['srt']:.2f}")


if __name__ == "__main__":
    main()
