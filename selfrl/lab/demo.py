"""`selfrl demo`: from one SFT start and one seed, oracle vs srt vs mgrpo vs mgrpo+IQR on the model organism.

Every run gets the same budget (selfrl/lab/configs/demo.yaml). A finished run is kept and skipped when the demo is
started again; an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path

from selfrl.checkpoint import latest_checkpoint
from selfrl.grpo_config import load_config
from selfrl.organism import resolve_organism
from selfrl.lab.report import write_report
from selfrl.grpo import train

DEMO_RUNS = [
    ("oracle", ["method=oracle"]),
    ("srt", ["method=srt"]),
    ("mgrpo", ["method=mgrpo"]),
    ("mgrpo_iqr", ["method=mgrpo", "iqr_filter=true"]),
]


def demo_config_path() -> Path:
    return Path(str(resources.files("selfrl.lab") / "configs" / "demo.yaml"))


def run_demo(out_dir: str = "runs/demo", sets: list[str] | None = None, progress: bool = True) -> str:
    out = Path(out_dir)
    t0 = time.perf_counter()
    base = load_config(demo_config_path(), list(sets or []))
    if base.model.startswith("organism"):
        print(f"[demo] model organism: {resolve_organism(base.model, progress=progress)}")
    run_dirs = []
    for name, run_sets in DEMO_RUNS:
        run_dir = out / name
        cfg = load_config(demo_config_path(), run_sets + list(sets or []) + [f"output_dir={run_dir}", f"progress={progress}"])
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None and ckpt.name == f"step_{cfg.max_steps:06d}":
            print(f"[demo] {name}: already finished, kept")
        elif ckpt is not None:
            print(f"[demo] {name}: resuming from {ckpt.name}")
            train(cfg, resume=True)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run without a checkpoint starts over
            print(f"[demo] {name}: training {cfg.max_steps} steps")
            train(cfg)
        run_dirs.append(run_dir)
    md = write_report(run_dirs, out, title="selfrl demo: label-free RL on the model organism")
    print(md)
    print(f"[demo] report: {out / 'report.md'} and {out / 'report.png'} ({time.perf_counter() - t0:.0f} s)")
    return md
