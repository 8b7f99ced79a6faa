"""The one report writer: `selfrl report RUN_DIR...`, `selfrl demo` and `selfrl study` all write through it.

Runs are grouped into rows (a study's rows; for `selfrl report` and the demo, one row per run directory) and each
row's seeds are summarised: start, peak, final and final - start validation accuracy, seconds per step, and the
label-free collapse detector's alarm against the fall of accuracy. The table reports the FINAL checkpoint's accuracy
next to the peak, and says which labels each run used (methods.md §2: a peak picked with labels is not a
label-free result).
"""
from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from selfrl.errors import SelfRLError
from selfrl.logger import read_metrics

STATS = ("start", "peak", "final", "gain", "start_mean", "final_mean", "start_maj", "final_maj")
PANELS = [  # curves.png: the labelled results first, then the label-free signals a user can watch without labels
    ("val/accuracy", "validation accuracy (greedy, labelled)"),
    ("val/mean@k", "validation mean@k (sampled, labelled)"),
    ("reward/pseudo", "pseudo-reward (training reward)"),
    ("policy/entropy", "policy entropy (nats/token)"),
    ("vote/majority_share", "majority share of the training vote"),
    ("canary/majority_share", "majority share on the canary prompts"),
]
# What an empty panel says instead of staying blank: the canary is checked only with the collapse detector on.
EMPTY_PANEL = {"canary/majority_share": "no run checked the canary\n(it runs with collapse_detector on)"}


@dataclass
class Outcome:
    """One run as found on disk: all the report reads."""

    row: str
    seed: int
    status: str  # done, partial, failed or not run
    cfg: dict
    metrics: list[dict]
    error: str | None = None
    wall_s: float | None = None
    resumed: bool = False


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
    sampled = {}  # the paper's evaluation beside greedy: mean@k and maj@k at eval_temperature, start and final
    for key, name in (("val/mean@k", "mean"), ("val/maj@k", "maj")):
        got = [r[key] for r in rows if r.get(key) is not None]
        sampled.update({f"start_{name}": got[0] if got else None, f"final_{name}": got[-1] if got else None})
    return {"start": vals[0][1], "peak": peak, "peak_step": peak_step, "final": vals[-1][1], "final_step": vals[-1][0],
            "gain": vals[-1][1] - vals[0][1], "step_s": sum(times) / len(times) if times else None, **sampled}


FALL_MARGIN = 0.05  # issue 15: a run has fallen at its first evaluation more than this below its start


def fall_step(rows: list[dict]) -> int | None:
    """The first evaluation more than FALL_MARGIN below the run's start (None: it never fell)."""
    vals = val_curve(rows)
    return next((step for step, acc in vals if acc < vals[0][1] - FALL_MARGIN), None) if vals else None


def collapse_events(rows: list[dict], cfg: dict | None = None) -> dict:
    """When the label-free collapse detector first fires, when validation accuracy fell, and the lead time between.

    The alarm is the current detector (selfrl/detector.py) replayed over the logged metrics with the run's window
    and min_signals, so runs made before a detector change are judged by today's; the fall is the first evaluation
    more than FALL_MARGIN below the start (read from labels after the fact); lead = fall - alarm, positive when the
    alarm came first; None where either event is missing."""
    from selfrl.detector import first_alarm

    cfg = cfg or {}
    watched = any("detector/alarm" in r for r in rows)  # the detector was on: its inputs were logged
    alarm = first_alarm(rows, cfg.get("detector_window", 20), cfg.get("detector_min_signals", 2)) if watched else None
    fall = fall_step(rows)
    return {"alarm_step": alarm, "fall_step": fall,
            "lead": fall - alarm if alarm is not None and fall is not None else None}


def spread(values: list[float]) -> dict | None:
    """mean, sample standard deviation (None for one value), min and max."""
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def _by_row(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    rows = defaultdict(list)
    for o in outcomes:
        rows[o.row].append(o)
    return dict(rows)


def _counted(o: Outcome) -> bool:
    """Finished and interrupted runs enter the means; a failed run's numbers are not its method's result."""
    return o.status in ("done", "partial") and run_stats(o.metrics) is not None


def row_summaries(outcomes: list[Outcome]) -> list[dict]:
    """Per study row: seed counts by status and, over the counted seeds, the spread of start, peak, final and
    final - start validation accuracy, the mean peak step and the mean seconds per training step."""
    out = []
    for row, runs in _by_row(outcomes).items():
        stats = [run_stats(o.metrics) for o in runs if _counted(o)]
        times = [s["step_s"] for s in stats if s["step_s"] is not None]
        summary = {"row": row, "method": method_name(runs[0].cfg), "labels_used": labels_used(runs[0].cfg),
                   "seeds": len(runs), **{st: sum(o.status == st for o in runs) for st in ("done", "partial", "failed")},
                   "n": len(stats)}
        summary.update({k: spread([s[k] for s in stats if s[k] is not None]) for k in STATS})
        summary["peak_step"] = statistics.fmean([s["peak_step"] for s in stats]) if stats else None
        summary["step_s"] = statistics.fmean(times) if times else None
        out.append(summary)
    return out


def detector_table(outcomes: list[Outcome]) -> list[dict]:
    """Per study row, how the label-free collapse detector's first alarm relates to the fall of validation accuracy
    (report.collapse_events). False alarms are counted two ways: alarms in oracle runs (gold rewards do not collapse
    the way a vote does) and alarms in runs whose accuracy never fell."""
    out = []
    for row, runs in _by_row(outcomes).items():
        runs = [o for o in runs if o.metrics]
        events = [collapse_events(o.metrics, o.cfg) for o in runs]
        leads = [e["lead"] for e in events if e["lead"] is not None]
        out.append({
            "row": row,
            "runs": len(runs),
            "watched": sum(any("detector/alarm" in r for r in o.metrics) for o in runs),  # detector was on
            "alarmed": sum(e["alarm_step"] is not None for e in events),
            "fell": sum(e["fall_step"] is not None for e in events),
            "leads": leads,
            "mean_lead": statistics.fmean(leads) if leads else None,
            "oracle_alarms": sum(e["alarm_step"] is not None and o.cfg.get("method") == "oracle"
                                 for o, e in zip(runs, events)),
            "alarms_without_fall": sum(e["alarm_step"] is not None and e["fall_step"] is None for e in events),
        })
    return out


def band(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, mean, min and max over the curves that logged each step (a run that stopped early leaves the mean)."""
    at = defaultdict(list)
    for curve in curves:
        for step, v in dict(curve).items():
            at[step].append(v)
    steps = sorted(at)
    return steps, [statistics.fmean(at[s]) for s in steps], [min(at[s]) for s in steps], [max(at[s]) for s in steps]


def smooth(curve: list[tuple[int, float]], every_step: int = 100, window: int = 25) -> list[tuple[int, float]]:
    """A per-step training metric (more than `every_step` points) as its trailing `window`-step mean, so its trend
    can be read; evaluations and canary checks are drawn as logged."""
    if len(curve) <= every_step:
        return curve
    values = [v for _, v in curve]
    return [(step, statistics.fmean(values[max(0, j - window + 1) : j + 1])) for j, (step, _) in enumerate(curve)]


def plot_study(outcomes: list[Outcome], out_png: Path) -> list[str]:
    """Draw the PANELS as curves.png; returns the metrics no run logged, whose panels say so instead of staying blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 8))
    empty = []
    by_row = _by_row(outcomes)
    palette = plt.cm.tab10 if len(by_row) <= 10 else plt.cm.tab20  # distinct colours for up to 20 rows
    for i, (row, runs) in enumerate(by_row.items()):
        runs = [o for o in runs if _counted(o)]
        for ax, (key, _) in zip(axes.flat, PANELS):
            curves = [smooth([(r["step"], r[key]) for r in o.metrics if r.get(key) is not None]) for o in runs]
            steps, mean, lo, hi = band([c for c in curves if c])
            if steps:
                color = palette(i % palette.N)
                ax.plot(steps, mean, color=color, label=f"{row} (n={len(runs)})", linewidth=1.4,
                        marker="o" if key == "val/accuracy" else None, markersize=3)
                ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
        for o in runs:  # each run's first collapse alarm, to read the detector's lead time off the accuracy curve
            alarm = collapse_events(o.metrics, o.cfg)["alarm_step"]
            if alarm is not None:
                axes.flat[0].axvline(alarm, color=palette(i % palette.N), linestyle=":", linewidth=1, alpha=0.7)
    for ax, (key, title) in zip(axes.flat, PANELS):
        ax.set_title(f"{title}: mean, min-max band over seeds", fontsize=10)
        if key in ("reward/pseudo", "policy/entropy", "vote/majority_share"):
            ax.set_title(f"{title}: 25-step mean, band over seeds", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            empty.append(key)
            ax.text(0.5, 0.5, EMPTY_PANEL.get(key, "no run logged it"), transform=ax.transAxes, ha="center",
                    va="center", color="0.4", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110, format="png")  # format: the path may be a temp name
    plt.close(fig)
    return empty


def _cell(s: dict | None, signed: bool = False) -> str:
    if s is None:
        return "—"
    f = "{:+.3f}" if signed else "{:.3f}"
    if s["std"] is None:
        return f.format(s["mean"])
    return f"{f.format(s['mean'])} ± {s['std']:.3f} [{f.format(s['min'])}, {f.format(s['max'])}]"


def _num(v, fmt: str = "{:.3f}") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _mean_arrow(start: dict | None, final: dict | None) -> str:
    return "—" if start is None or final is None else f"{start['mean']:.3f} → {final['mean']:.3f}"


def markdown(title: str, outcomes: list[Outcome], png: str = "curves.png") -> str:
    rows = row_summaries(outcomes)
    md = [f"# {title}\n",
          "Validation accuracy is greedy on the labelled validation split. `final` is each run's last evaluation (its "
          "final checkpoint), chosen by no one; `peak` is shown for reference only (picking it would use labels). "
          "Cells are mean ± sample std [min, max] over the seeds counted: done runs and interrupted (partial) ones, "
          "whose `final` is only their latest evaluation; failed runs are listed, never averaged. mean@k and maj@k "
          "are the M-GRPO paper's evaluation beside greedy: k samples per question at `eval_temperature`, the "
          "share correct and the majority answer's accuracy (start → final).\n",
          "| row | method | labels used for training | seeds done/total | start | peak | peak step (mean) | final | "
          "final − start | s/step (mean) | mean@k start → final | maj@k start → final |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        seeds = f"{s['done']}/{s['seeds']}" + "".join(f", {s[k]} {k}" for k in ("partial", "failed") if s[k])
        md.append(f"| {s['row']} | {s['method']} | {s['labels_used']} | {seeds} | {_cell(s['start'])} | "
                  f"{_cell(s['peak'])} | {_num(s['peak_step'], '{:.1f}')} | {_cell(s['final'])} | "
                  f"{_cell(s['gain'], signed=True)} | {_num(s['step_s'], '{:.2f}')} | "
                  f"{_mean_arrow(s['start_mean'], s['final_mean'])} | {_mean_arrow(s['start_maj'], s['final_maj'])} |")
    md += ["\n## Runs\n",
           "| row | seed | status | start | peak (step) | final (step) | final − start | s/step | first alarm | "
           "fall step | lead | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        st, ev = run_stats(o.metrics), collapse_events(o.metrics, o.cfg)
        wall = _num(o.wall_s, "{:.1f}") + (" (last session)" if o.resumed else "")
        nums = (f"{st['start']:.3f} | {st['peak']:.3f} ({st['peak_step']}) | {st['final']:.3f} ({st['final_step']}) | "
                f"{st['gain']:+.3f} | {_num(st['step_s'], '{:.2f}')}") if st else "— | — | — | — | —"
        md.append(f"| {o.row} | {o.seed} | {o.status} | {nums} | {_num(ev['alarm_step'], '{}')} | "
                  f"{_num(ev['fall_step'], '{}')} | {_num(ev['lead'], '{:+d}')} | {wall} |")
    md += ["\n## Collapse detector\n",
           f"The fall is the first evaluation more than {FALL_MARGIN} below the run's start (read from labels after the "
           "fact); the alarm is the label-free detector (selfrl/detector.py) replayed over the logged metrics; lead = "
           "fall step − first alarm step (positive: the alarm came first). `watched`: runs that ran the detector.\n",
           "| row | runs | watched | alarmed | fell | mean lead (steps) | alarms in oracle runs | alarms without a fall |",
           "|---|---|---|---|---|---|---|---|"]
    for d in detector_table(outcomes):
        md.append(f"| {d['row']} | {d['runs']} | {d['watched']} | {d['alarmed']} | {d['fell']} | "
                  f"{_num(d['mean_lead'], '{:+.1f}')} | {d['oracle_alarms']} | {d['alarms_without_fall']} |")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        md += ["\n## Failed runs\n"] + [f"- {o.row}/seed_{o.seed}: {o.error}" for o in failed]
    md.append(f"\n![curves]({png})\n\nCurves: the mean over the seeds that logged each step, with their min–max band; "
              "dotted lines mark each run's first collapse alarm.\n")
    return "\n".join(md)


def _write_replacing(path: Path, write) -> None:
    """write(temp path), then rename over `path`. The temp name is this process's: two studies sharing an --out
    (disjoint --only rows, side by side) may report at once, and neither may leave a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_study_report(title: str, outcomes: list[Outcome], out: Path, png: str = "curves.png") -> str:
    """report.md, the curves (`png`) and summary.json (the tables as data) in `out`; returns the markdown."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # an --out that is a file, or not writable
        raise SelfRLError(f"cannot write the report to {out}: {e.strerror}") from None
    _write_replacing(out / png, lambda p: plot_study(outcomes, p))
    md = markdown(title, outcomes, png)
    _write_replacing(out / "report.md", lambda p: p.write_text(md))
    data = {"rows": row_summaries(outcomes), "detector": detector_table(outcomes)}
    _write_replacing(out / "summary.json", lambda p: p.write_text(json.dumps(data, indent=2)))
    return md


def outcome_of(run_dir: Path) -> Outcome:
    """A run directory as a one-seed row named after it: done when it logged its last step (or a study marked it)."""
    cfg, rows = load_run(run_dir)
    last = max((r["step"] for r in rows), default=-1)
    done = (Path(run_dir) / "done.json").is_file() or last >= cfg.get("max_steps", math.inf)
    return Outcome(run_name(cfg, Path(run_dir)), cfg.get("seed", 0), "done" if done else "partial", cfg, rows)


def write_report(run_dirs: list[Path], out_dir: Path, title: str = "selfrl report") -> str:
    """report.md, report.png and summary.json for these run directories, one row each; returns the markdown."""
    outcomes = [outcome_of(Path(r)) for r in run_dirs]
    for o in outcomes:
        if run_stats(o.metrics) is None:
            raise SelfRLError(f"{o.row} has no val/accuracy yet")
    return write_study_report(title, outcomes, Path(out_dir), png="report.png")
