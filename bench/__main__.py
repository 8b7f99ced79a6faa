"""selfrl's performance benchmark: `make bench` (or `python -m bench [--quick]`) prints every table of
docs/performance.md, measured now, on this machine, in one run.

  1. selfrl vs TRL's GRPOTrainer on the same work: the same model read from the same directory, the same prompts,
     B prompts x G samples, the same max new tokens, temperature 1, one optimizer update per rollout batch, KL
     coefficient beta to the start model, and a majority-vote reward (TRL through a reward function). TRL runs with
     its defaults otherwise (which turn gradient checkpointing on) and once more with gradient checkpointing off.
  2. mgrpo (+IQR) step time over srt step time at the same G.
  3. The momentum update's (EMA) wall time as a share of an mgrpo step.
  4. Rollout tokens per second: selfrl's sampler vs plain `model.generate` on the same batch.
  5. How step time grows with G, B, response length and model size.

Each measurement runs in a fresh process (bench/worker.py); step times are medians over the measured steps, after
warm-up steps. Peak memory is the process's peak resident set (ru_maxrss), imports included. TRL is needed for
table 1 only: `pip install -e '.[bench]'` (`make bench` does it); without it the other tables still run.
On a machine shared with other work, `python -m bench.interleave` measures the headline ratios in rounds, and
`python -m bench.profile` shows where a step's time goes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.models import model_dir, parameters


def measure(spec: dict) -> dict:
    """Run one worker process; its RESULT line, parsed. A failing worker ends the benchmark with its last lines."""
    cmd = [sys.executable, "-m", "bench.worker", json.dumps(spec)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            # the 1-minute load average before and after: on a shared machine it says how much others competed
            return {**json.loads(line[7:]), "load": (load, os.getloadavg()[0])}
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    raise SystemExit(f"benchmark worker failed: {json.dumps(spec)}\n{tail}")


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def table(title: str, head: list[str], rows: list[list]) -> str:
    out = [f"\n### {title}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def have_trl() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the organism only, fewer steps (about 3 minutes)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in every worker (default: all cores)")
    ap.add_argument("--out", default="runs/bench", help="directory for bench.json and bench.md")
    args = ap.parse_args()
    t_start, load_start = time.time(), os.getloadavg()[0]
    th = args.threads
    quick = args.quick
    org = model_dir("organism")
    big = {n: model_dir(n) for n in ("qwen2-5m", "qwen2-20m")}
    # Steps measured after warm-up, per model: enough for a stable median within the time budget.
    steps = {org: (6, 2) if quick else (12, 2), big["qwen2-5m"]: (4, 1), big["qwen2-20m"]: (3, 1)}
    shapes = {org: dict(B=8, G=8, T=16), big["qwen2-5m"]: dict(B=8, G=8, T=32), big["qwen2-20m"]: dict(B=8, G=8, T=32)}
    names = {org: "organism", **{v: k for k, v in big.items()}}
    results: dict = {"machine": machine(th), "tables": {}}
    md = [f"Measured {time.strftime('%Y-%m-%d')} on {results['machine']}; `python -m bench{' --quick' if quick else ''} --threads {th}`."]

    seen: dict[str, tuple] = {}

    def selfrl(model, method="srt", iqr=False, **shape):
        """(median s/step, peak RSS MiB, mean response tokens, RSS MiB after imports) of a selfrl run; a run already
        measured is reused."""
        n, w = steps[model]
        spec = dict(kind="selfrl", model=model, method=method, iqr=iqr, steps=n, warmup=w, beta=0.005, threads=th,
                    **{**shapes[model], **shape})
        key = json.dumps(spec, sort_keys=True)
        if key not in seen:
            r = measure(spec)
            seen[key] = (med(r["step_s"]), r["peak_rss_mib"], statistics.mean(r["response_tokens"]), r["base_rss_mib"],
                         r["load"])
        return seen[key]

    # 1. selfrl vs TRL -----------------------------------------------------------------------------------------
    models = [org] if quick else [org, big["qwen2-20m"]]
    rows = []
    if have_trl():
        for m in models:
            n, w = steps[m]
            base = dict(model=m, steps=n, warmup=w, beta=0.005, threads=th, **shapes[m])
            srt = selfrl(m)
            mg = selfrl(m, "mgrpo")
            trl = {gc: measure(dict(kind="trl", gradient_checkpointing=gc, **base)) for gc in (True, False)}
            t_gc, t_nogc = med(trl[True]["step_s"]), med(trl[False]["step_s"])
            label = f"{names[m]} ({parameters(m) / 1e6:.1f}M), B={shapes[m]['B']} G={shapes[m]['G']} T={shapes[m]['T']}"

            def row(trainer, s, peak, length, base_rss, load, bold=""):
                # mean response tokens per rollout (up to and including EOS, both libraries count alike): equal
                # lengths say both sides generated and trained on the same amount of text
                return [label, trainer, f"{s:.3f}", f"{1 / s:.2f}", f"{length:.1f}", f"{peak:.0f}",
                        f"{peak - base_rss:.0f}", f"{bold}{t_gc / s:.2f}{bold}", f"{bold}{t_nogc / s:.2f}{bold}",
                        f"{load[0]:.1f} → {load[1]:.1f}"]

            for gc, name in ((True, "TRL GRPOTrainer (defaults: gradient checkpointing on)"),
                             (False, "TRL GRPOTrainer, gradient checkpointing off")):
                r = trl[gc]
                rows.append(row(name, med(r["step_s"]), r["peak_rss_mib"], statistics.mean(r["response_tokens"]),
                                r["base_rss_mib"], r["load"]))
            rows.append(row("selfrl srt (the same work)", *srt, bold="**"))
            rows.append(row("selfrl mgrpo (+ momentum rollouts, anchor KL, EMA)", *mg))
        md.append(table("1. selfrl vs TRL GRPOTrainer, same work (speed-up = TRL s/step ÷ this row's s/step)",
                        ["model, shape", "trainer", "s/step", "steps/s", "mean response tokens", "peak RSS MiB",
                         "peak − RSS after imports, MiB", "speed-up vs TRL default", "speed-up vs TRL no-GC",
                         "load avg before → after"], rows))
    else:
        print("\nTRL is not installed: table 1 skipped (pip install -e '.[bench]' or make bench)", flush=True)
    results["tables"]["trl"] = rows

    # 2. mgrpo / srt -------------------------------------------------------------------------------------------
    rows = []
    for G in (8,) if quick else (8, 16):
        srt_s, *_ = selfrl(org, G=G)
        mg_s, *_ = selfrl(org, "mgrpo", G=G)
        iqr_s, *_ = selfrl(org, "mgrpo", iqr=True, G=G)
        rows.append([f"organism, B=8 G={G} T=16", f"{srt_s:.3f}", f"{mg_s:.3f}", f"**{mg_s / srt_s:.2f}**",
                     f"{iqr_s:.3f}", f"**{iqr_s / srt_s:.2f}**"])
    if not quick:
        m = big["qwen2-20m"]
        srt_s, *_ = selfrl(m)
        mg_s, *_ = selfrl(m, "mgrpo", iqr=True)
        rows.append(["qwen2-20m, B=8 G=8 T=32", f"{srt_s:.3f}", "", "", f"{mg_s:.3f}", f"**{mg_s / srt_s:.2f}**"])
    md.append(table("2. M-GRPO's cost at the same G (target: mgrpo ≤ 1.35 × srt)",
                    ["model, shape", "srt s/step", "mgrpo s/step", "mgrpo / srt", "mgrpo+IQR s/step", "mgrpo+IQR / srt"],
                    rows))
    results["tables"]["mgrpo"] = rows

    # 3. EMA ---------------------------------------------------------------------------------------------------
    rows = []
    for m in [org] if quick else [org, big["qwen2-20m"]]:
        ema = med(measure(dict(kind="ema", model=m, repeats=30, threads=th))["ema_s"])
        mg_s, *_ = selfrl(m, "mgrpo")
        rows.append([f"{names[m]} ({parameters(m) / 1e6:.1f}M)", f"{ema * 1e3:.2f}", f"{mg_s:.3f}",
                     f"**{100 * ema / mg_s:.2f}%**"])
    md.append(table("3. The momentum update (EMA) as a share of an mgrpo step (target: < 5%)",
                    ["model", "EMA ms", "mgrpo s/step", "EMA share"], rows))
    results["tables"]["ema"] = rows

    # 4. rollout tokens/s --------------------------------------------------------------------------------------
    rows = []
    for m in [org] if quick else [org, big["qwen2-20m"]]:
        r = measure(dict(kind="generate", model=m, repeats=3 if quick else 5, threads=th, **shapes[m]))
        ours, plain = med(r["selfrl"]), med(r["plain"])
        rows.append([f"{names[m]}, B={shapes[m]['B']} G={shapes[m]['G']} T={shapes[m]['T']}", f"{plain:.0f}",
                     f"{ours:.0f}", f"**{ours / plain:.2f}**"])
    md.append(table("4. Rollout tokens/s (response tokens up to EOS): selfrl's sampler vs model.generate",
                    ["model, shape", "model.generate tok/s", "selfrl tok/s", "ratio"], rows))
    results["tables"]["generate"] = rows

    # 5. scaling -----------------------------------------------------------------------------------------------
    rows = []
    grid = [("G", G, org, {}) for G in (4, 8, 16)] + [("B", B, org, {}) for B in (4, 8, 16)]
    if not quick:
        grid += [("T", T, big["qwen2-5m"], {}) for T in (16, 32, 64)]
        grid += [("model", names[m], m, dict(T=32)) for m in (org, big["qwen2-5m"], big["qwen2-20m"])]
    for axis, value, m, fixed in grid:
        shape = {**shapes[m], **fixed, **({axis: value} if axis in "GBT" else {})}
        s, mem, length, *_ = selfrl(m, **shape)
        rows.append([axis, f"{names[m]} B={shape['B']} G={shape['G']} T={shape['T']}", f"{s:.3f}", f"{length:.1f}",
                     f"{mem:.0f}"])
    md.append(table("5. srt step time as G, B, response length and model size grow",
                    ["varied", "run", "s/step", "mean response tokens", "peak RSS MiB"], rows))
    results["tables"]["scaling"] = rows

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["seconds"] = round(time.time() - t_start)
    results["load_start_end"] = [load_start, os.getloadavg()[0]]
    md.insert(1, f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
                 f"({os.cpu_count()} cores).")
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    (out / "bench.md").write_text("\n".join(md) + "\n")
    print(f"\nbenchmark took {results['seconds']} s; tables in {out / 'bench.md'}")


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    import transformers

    trl = "not installed"
    if have_trl():
        import trl as trl_mod

        trl = trl_mod.__version__
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {threads} threads, transformers "
            f"{transformers.__version__}, TRL {trl}")


if __name__ == "__main__":
    main()
