"""Replay the label-free collapse detector over finished runs, with its frozen settings or others (issue 15).

The detector is a function of the logged metrics (training metrics and the canary checks), so any threshold can be
tried on runs already made, without training again. Prints, for each signal alone and for the combination, how
many falling runs it warned before their fall (fall: the first evaluation more than 0.05 below the start), the mean
lead, and its alarms on runs that never fell and on `oracle` runs. Thresholds chosen this way are fitted to the
runs replayed: say which runs were the calibration set.

    python scripts/detector_replay.py runs/study                       # the frozen detector
    python scripts/detector_replay.py runs/study --set entropy_drop=0.9 --min-signals 1
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from selfrl import detector
from selfrl.lab.report import FALL_MARGIN, fall_step
from selfrl.logger import read_metrics


def load_runs(dirs: list[Path], rows: list[str] | None) -> list[tuple[str, dict, list[dict], int | None]]:
    """(name, config, metrics, fall step) of every finished alarm-only run with canary checks under `dirs`."""
    runs = []
    for study in dirs:
        for d in sorted(study.glob("*/seed_*")):
            if (rows and d.parent.name not in rows) or not (d / "config.yaml").is_file():
                continue
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            if cfg.get("collapse_detector") != "alarm" or not (d / "done.json").is_file():
                continue  # a run the detector acted on changed its own future: not a fair replay
            metrics = read_metrics(d)
            if not any(k.startswith("canary/") for k in metrics[0]):
                continue  # made before the canary existed
            runs.append((f"{study.name}/{d.parent.name}/{d.name}", cfg, metrics, fall_step(metrics)))
    return runs


def score(runs, signals, window, min_signals: int) -> dict:
    """window(cfg) -> the step signals' window for that run."""
    leads, warned, late, false, oracle = [], 0, 0, 0, 0
    for _, cfg, rows, fall in runs:
        alarm = detector.first_alarm(rows, window(cfg), min_signals, signals)
        if fall is not None:
            if alarm is not None and alarm < fall:
                warned += 1
                leads.append(fall - alarm)
            elif alarm is not None:
                late += 1
        elif alarm is not None:
            false += 1
            oracle += cfg.get("method") == "oracle"
    falls = sum(f is not None for *_, f in runs)
    return {"warned": f"{warned}/{falls}", "late": late, "lead": f"{sum(leads) / len(leads):.0f}" if leads else "-",
            "false": f"{false}/{len(runs) - falls}", "oracle": oracle}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", type=Path)
    ap.add_argument("--rows", nargs="*", help="only these study rows")
    ap.add_argument("--set", action="append", default=[], metavar="SIGNAL=THRESHOLD")
    ap.add_argument("--window", type=int, default=None, help="steps in a step signal's average (default: each run's)")
    ap.add_argument("--min-signals", type=int, default=None, help="signals needed at once (default: each run's)")
    ap.add_argument("--runs", action="store_true", help="also print each run's fall and first alarm")
    args = ap.parse_args(argv)
    signals = list(detector.SIGNALS)
    names = {s.name for s in signals}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in names:
            sys.exit(f"--set {item}: no signal {name!r} (signals: {', '.join(sorted(names))})")
        signals = [dataclasses.replace(s, threshold=float(value)) if s.name == name else s for s in signals]
    runs = load_runs(args.studies, args.rows)
    falls = sum(f is not None for *_, f in runs)
    print(f"{len(runs)} alarm-only runs with canary checks; {falls} fell more than {FALL_MARGIN} below their start")
    window = lambda cfg: args.window or cfg.get("detector_window", 20)  # noqa: E731
    print("| detector | falls warned before the fall | alarms at or after the fall | mean lead (steps) | "
          "alarms on runs that never fell | on oracle |")
    print("|---|---|---|---|---|---|")
    settings = [(f"{s.name} alone ({s.rule} {s.threshold:g})", [s], 1) for s in signals]
    k = args.min_signals or (runs[0][1].get("detector_min_signals", 2) if runs else 2)
    settings.append((f"combined, {k} of {len(signals)}", signals, k))
    for label, sigs, need in settings:
        r = score(runs, sigs, window, need)
        print(f"| {label} | {r['warned']} | {r['late']} | {r['lead']} | {r['false']} | {r['oracle']} |")
    if args.runs:
        for name, cfg, rows, fall in runs:
            alarm = detector.first_alarm(rows, window(cfg), k, signals)
            print(f"{name}: fall {fall}, first alarm {alarm}")


if __name__ == "__main__":
    main()
