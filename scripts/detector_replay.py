"""Replay the label-free collapse detector over finished runs with other settings (docs/results.md).

The detector is a function of the logged metrics, so any (window, min_signals) can be tried on runs already made,
without training again. Prints, per setting, how many collapsing runs it warned about and with what lead time, and
how many alarms it raised on runs that never fell (oracle included). Settings chosen this way are fitted to these
runs: an in-sample figure, not a held-out one.

    python scripts/detector_replay.py runs/study
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from selfrl.detector import CollapseDetector
from selfrl.logger import read_metrics
from selfrl.lab.report import collapse_events


def first_alarm(rows: list[dict], window: int, min_signals: int) -> int | None:
    det = CollapseDetector(window, min_signals)
    for r in rows:
        if r["step"] > 0 and det.update(r).alarm:
            return r["step"]
    return None


def main(study: Path) -> None:
    runs = []
    for d in sorted(study.glob("*/seed_*")):
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        if cfg.get("collapse_detector") != "alarm" or not (d / "done.json").is_file():
            continue  # a run the detector acted on changed its own future: not a fair replay
        rows = read_metrics(d)
        runs.append((f"{d.parent.name}/{d.name}", cfg["method"], rows, collapse_events(rows)["fall_step"]))
    print(f"{len(runs)} alarm-only runs; {sum(f is not None for *_, f in runs)} fell 20% below their peak")
    print("| window | min signals | falls warned before the fall | mean lead (steps) | alarms on runs that never fell | on oracle |")
    print("|---|---|---|---|---|---|")
    for window in (10, 20, 40):
        for k in (1, 2, 3, 4):
            leads, false, oracle = [], 0, 0
            for name, method, rows, fall in runs:
                alarm = first_alarm(rows, window, k)
                if fall is not None and alarm is not None and alarm < fall:
                    leads.append(fall - alarm)
                if fall is None and alarm is not None:
                    false += 1
                    oracle += method == "oracle"
            falls = sum(f is not None for *_, f in runs)
            mean = f"{sum(leads) / len(leads):.0f}" if leads else "-"
            print(f"| {window} | {k} | {len(leads)}/{falls} | {mean} | {false}/{len(runs) - falls} | {oracle} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study"))
