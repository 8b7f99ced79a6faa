"""`selfrl report RUN_DIR...`: curves of several runs on shared axes, and a start / peak / final table.

The table reports the FINAL checkpoint's accuracy next to the peak, and says which labels each run used
(methods.md §2: a peak picked with labels is not a label-free result). The per-run numbers here (`run_stats`,
`collapse_events`, `labels_used`) are also what `selfrl study` aggregates over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from selfrl.errors import SelfRLError
from selfrl.logger import read_metrics

PANELS = [
    ("val/accuracy", "validation accuracy (greedy)"),
    ("reward/pseudo", "pseudo-reward (training reward)"),
    ("policy/entropy", "policy entropy (nats/token)"),
    ("filter/dropped", "trajectories dropped by the IQR filter"),
]


@dataclass
class RunSummary:
    name: str
    method: str
    labels_used: str
    start: float
    peak: float
    peak_step: int
    final: float
    final_step: int
    mean_step_s: float


def run_name(cfg: dict, run_dir: Path) -> str:
    return run_dir.name or cfg.get("method", "run")


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise SelfRLError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    cfg_path = run_dir / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    return cfg, read_metrics(run_dir)


def labels_used(cfg: dict) -> str:
    """Which labels a run's config lets reach training (methods.md §2): a result that used labels is not label-free."""
    used = []
    if cfg.get("method") == "oracle":
        used.append("gold answers (reward)")
    if cfg.get("early_stopping_patience") is not None:
        used.append(f"labelled split: {cfg.get('early_stopping_examples')} examples (early stopping)")
    return "; ".join(used) or "none"


def method_name(cfg: dict) -> str:
    return cfg.get("method", "?") + ("+iqr" if cfg.get("iqr_filter") else "")


def val_curve(rows: list[dict]) -> list[tuple[int, float]]:
    """(step, val/accuracy) at every evaluation, in logged order."""
    return [(r["step"], r["val/accuracy"]) for r in rows if r.get("val/accuracy") is not None]


def run_stats(rows: list[dict]) -> dict | None:
    """start (step 0), peak and its step (the earliest on a tie), final (the last logged evaluation: the run's last
    checkpoint, chosen by no one) and mean seconds per training step; None before the first evaluation."""
    vals = val_curve(rows)
    if not vals:
        return None
    peak_step, peak = max(vals, key=lambda sv: (sv[1], -sv[0]))
    times = [r["time/step_s"] for r in rows if r.get("time/step_s") is not None]
    return {"start": vals[0][1], "peak": peak, "peak_step": peak_step, "final": vals[-1][1], "final_step": vals[-1][0],
            "gain": vals[-1][1] - vals[0][1], "step_s": sum(times) / len(times) if times else None}


def collapse_events(rows: list[dict], drop: float = 0.2) -> dict:
    """When the label-free collapse detector first fired, when validation accuracy fell, and the lead time between.

    The fall is the first evaluation whose accuracy is below (1 - drop) x the best accuracy so far (that evaluation
    included); lead = fall - alarm, positive when the alarm came first; None where either event is missing."""
    alarm = next((r["step"] for r in rows if r.get("detector/alarm")), None)
    fall, best = None, float("-inf")
    for step, acc in val_curve(rows):
        best = max(best, acc)
        if acc < (1 - drop) * best:
            fall = step
            break
    return {"alarm_step": alarm, "fall_step": fall,
            "lead": fall - alarm if alarm is not None and fall is not None else None}


def summarize(run_dir: Path) -> RunSummary:
    cfg, rows = load_run(run_dir)
    st = run_stats(rows)
    if st is None:
        raise SelfRLError(f"{run_dir} has no val/accuracy yet")
    return RunSummary(run_name(cfg, Path(run_dir)), method_name(cfg), labels_used(cfg), st["start"], st["peak"],
                      st["peak_step"], st["final"], st["final_step"], st["step_s"] or 0.0)


def markdown_table(summaries: list[RunSummary]) -> str:
    head = ("| run | method | labels used for training | start | peak (step) | final (step) | final − start | s/step |\n"
            "|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {s.name} | {s.method} | {s.labels_used} | {s.start:.3f} | {s.peak:.3f} ({s.peak_step}) | "
        f"{s.final:.3f} ({s.final_step}) | {s.final - s.start:+.3f} | {s.mean_step_s:.2f} |\n"
        for s in summaries
    )
    return head + body


def plot(run_dirs: list[Path], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for run_dir in run_dirs:
        cfg, rows = load_run(run_dir)
        for ax, (key, _) in zip(axes.flat, PANELS):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=run_name(cfg, Path(run_dir)), marker="o" if key == "val/accuracy" else None,
                        markersize=3, linewidth=1.2)
    for ax, (key, title) in zip(axes.flat, PANELS):
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def write_report(run_dirs: list[Path], out_dir: Path, title: str = "selfrl report") -> str:
    """Write report.md and report.png into out_dir; returns the markdown."""
    run_dirs = [Path(r) for r in run_dirs]
    summaries = [summarize(r) for r in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(run_dirs, out_dir / "report.png")
    md = (f"# {title}\n\nValidation accuracy is greedy on the labelled validation split. `final` is the last "
          f"checkpoint, chosen by no one; `peak` is shown for reference only (picking it would use labels).\n\n"
          f"{markdown_table(summaries)}\n![curves](report.png)\n")
    (out_dir / "report.md").write_text(md)
    return md
