"""Kill a real training run with SIGKILL at random moments, resume it each time, and compare with an uninterrupted run.

    python scripts/kill_resume.py --kills 8 --out runs/kill_resume

The deterministic version of this check (seven chosen moments, a tiny model) runs in the test suite
(tests/test_crash_resume.py); this script is its field test on the built-in organism, with kills at wall-clock
moments nobody chose. It prints one line per kill (when it landed: which steps were logged and checkpointed) and
the comparison: metrics rows equal (time/step_s excluded), final policy and momentum weights bit-identical.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from selfrl.logger import read_metrics

SETS = dict(model="organism", task="arith", method="mgrpo", iqr_filter="true", prompts_per_step=16, num_generations=8,
            max_completion_length=12, temperature=1.0, learning_rate=5e-5, lr_scheduler_type="constant", beta=0.0,
            max_steps=120, eval_every=10, eval_limit=128, save_every=5, save_total_limit=2, report_to="none",
            progress="false", torch_threads=1)


def selfrl(*args: str) -> list[str]:
    return [sys.executable, "-m", "selfrl", *args]


def train_args(out: Path) -> list[str]:
    return selfrl("train", *[a for k, v in SETS.items() for a in ("--set", f"{k}={v}")], "--set", f"output_dir={out}")


def rows(run: Path) -> list[dict]:
    """metrics.jsonl without wall-clock times, the one field a replay cannot reproduce."""
    return [{k: v for k, v in row.items() if k != "time/step_s"} for row in read_metrics(run)]


def state(run: Path) -> str:
    ckpts = sorted(p.name for p in run.glob("step_*"))
    try:
        logged = (run / "metrics.jsonl").read_text().splitlines()
        last = logged[-1] if logged else ""
        step = json.loads(last)["step"] if last.endswith("}") else f"partial line after {len(logged) - 1} rows"
    except (OSError, ValueError, KeyError):
        step = "none"
    return f"last logged step {step}; on disk {', '.join(ckpts) or 'nothing'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--out", default="runs/kill_resume")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times (not of training)")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    full, cut = out / "uninterrupted", out / "killed"
    t0 = time.perf_counter()
    subprocess.run(train_args(full), check=True, capture_output=True)
    span = time.perf_counter() - t0
    print(f"uninterrupted run: {span:.0f} s, {SETS['max_steps']} steps")
    rng = random.Random(args.seed)
    cmd = train_args(cut)
    for k in range(args.kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(4.0, 14.0)  # past start-up (about 3 s), well short of a whole run (about a minute)
        try:
            proc.wait(timeout=delay)
            print(f"kill {k + 1}: the run finished before its kill at {delay:.1f} s")
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        print(f"kill {k + 1} at {delay:4.1f} s: {state(cut)}")
        if (cut / "config.yaml").exists() and any(cut.glob("step_*/meta.json")):
            cmd = selfrl("train", "--resume", str(cut))
        else:
            shutil.rmtree(cut)  # killed before its first checkpoint: nothing to resume, start again
            cmd = train_args(cut)
    subprocess.run(cmd, check=True, capture_output=True)  # finish the run
    last = f"step_{SETS['max_steps']:06d}"
    same_rows = rows(full) == rows(cut)
    same_w = all(
        (a[key] == b[key]).all()
        for name in ("policy/model.safetensors", "momentum.safetensors")
        for a, b in [(load_file(full / last / name), load_file(cut / last / name))]
        for key in a
    )
    print(f"metrics rows equal: {same_rows} ({len(rows(full))} rows); final policy and momentum bit-identical: {same_w}")
    return 0 if same_rows and same_w else 1


if __name__ == "__main__":
    sys.exit(main())
