"""`selfrl study CONFIG`: a matrix of methods x seeds from one start, run in sequence, resumable, then one report.

A study file holds the config fields every run shares (`base`), the rows to compare (each a `set` of fields on top
of base), the seeds, and the overrides of a smoke pass (`quick`, applied with --quick):

    output_dir: runs/study          # default --out (with --quick: runs/study_quick, so a smoke pass never
    base: {model: organism, task: arith, max_steps: 1000}     # poses as the real study's runs)
    seeds: [0, 1, 2]
    quick: {max_steps: 40, eval_every: 10, eval_limit: 64}
    rows:
      - name: oracle
        set: {method: oracle}
      - name: srt+offline
        set: {method: srt, offline_labels: true}
        seeds: [0]                  # this row only

A run's config is defaults <- base <- row `set` <- quick (with --quick) <- --set <- {seed, output_dir:
OUT/ROW/seed_S}. Every run's config is built and validated before the first one trains: a typo fails in a second,
not after an hour.

The run directories are the study's only state, so there is nothing to get out of sync after a Ctrl-C or a kill:
  done.json                           train() returned; skipped. Only this marks completion: a run may end before
                                      max_steps (early stopping, the collapse detector's stop).
  failed.json, no metrics.jsonl       train() raised before its first step (a bad task, model, probe file): retried,
                                      since it costs nothing and the cause may have been fixed.
  failed.json and metrics.jsonl       failed mid-training: kept as failed (delete failed.json to resume it).
  metrics.jsonl, intact checkpoint    interrupted: resumed from the checkpoint.
  metrics.jsonl, no checkpoint        interrupted before its first save: deleted and restarted.
A finished run whose saved config differs from the one the study now builds is an error, not a silent skip: its
numbers would be reported under the wrong config.
"""
from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import shutil
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import yaml

from selfrl.checkpoint import latest_checkpoint, write_json_atomic
from selfrl.config import Config, apply_overrides, parse_sets
from selfrl.errors import ConfigError, SelfRLError
from selfrl.logger import read_metrics
from selfrl.report import collapse_events, labels_used, method_name, run_stats

log = logging.getLogger("selfrl")

TOP_KEYS = ("output_dir", "base", "seeds", "quick", "rows")
ROW_KEYS = ("name", "set", "seeds")
PER_RUN = ("seed", "output_dir")  # the study sets these for each run; a file or --set may not
# May differ between sessions of one run: where it lives (an absolute or a relative --out) and how it is displayed.
NOT_COMPARED = ("output_dir", "progress", "report_to", "torch_threads")
ROW_NAME = re.compile(r"^[A-Za-z0-9_+=-][A-Za-z0-9_.+=-]*$")  # a directory name, never a path
STATS = ("start", "peak", "final", "gain")
PANELS = [  # curves.png: the labelled result first, then the label-free signals a user can watch without labels
    ("val/accuracy", "validation accuracy (greedy, labelled)"),
    ("reward/pseudo", "pseudo-reward (training reward)"),
    ("policy/entropy", "policy entropy (nats/token)"),
    ("vote/majority_share", "majority share of the vote"),
]


@dataclass
class Row:
    name: str
    sets: dict  # config fields on top of base
    seeds: list[int]


@dataclass
class Study:
    path: Path
    output_dir: str
    base: dict
    quick: dict
    rows: list[Row]


@dataclass
class Run:
    row: str
    seed: int
    cfg: Config

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output_dir)


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


def study_path(name: str) -> Path:
    """A study file, or the name of a built-in one: `quick` -> selfrl/configs/study_quick.yaml, `study` ->
    selfrl/configs/study.yaml."""
    path = Path(name)
    if path.is_file():
        return path
    configs = Path(str(resources.files("selfrl") / "configs"))
    for builtin in (configs / f"study_{name}.yaml", configs / f"{name}.yaml"):
        if builtin.is_file():
            return builtin
    raise ConfigError(f"study file not found: {name}")


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(value).__name__}")
    for key in PER_RUN:
        if key in value:
            raise ConfigError(f"{where}: {key!r} is set per run by the study (use seeds: and --out)")
    return value


def _seeds(value, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise ConfigError(f"{where}: seeds must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: seeds repeat: {value!r}")
    return value


def _unknown(keys, known: tuple, where: str) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def load_study(path: str | Path) -> Study:
    """Parse and check a study file; any problem is a one-line ConfigError naming it."""
    path = study_path(str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{path}:{f' line {mark.line + 1}' if mark else ''} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    _unknown(data, TOP_KEYS, str(path))
    seeds = _seeds(data.get("seeds", [0]), f"{path}: seeds")
    rows_data = data.get("rows")
    if not isinstance(rows_data, list) or not rows_data:
        raise ConfigError(f"{path}: rows: expected a non-empty list of rows ({{name: ..., set: {{...}}}})")
    rows = []
    for i, r in enumerate(rows_data):
        if not isinstance(r, dict):
            raise ConfigError(f"{path}: rows[{i}]: expected a mapping with keys {', '.join(ROW_KEYS)}")
        _unknown(r, ROW_KEYS, f"{path}: rows[{i}]")
        name = r.get("name")
        if not isinstance(name, str) or not ROW_NAME.match(name):
            raise ConfigError(f"{path}: rows[{i}]: a row needs a name usable as a directory name "
                              f"(letters, digits, _ . + = -), got {name!r}")
        if name in (row.name for row in rows):
            raise ConfigError(f"{path}: rows[{i}]: duplicate row name {name!r}")
        where = f"{path}: row {name!r}"
        rows.append(Row(name, _mapping(r.get("set"), f"{where} set"), _seeds(r.get("seeds", seeds), where)))
    output_dir = data.get("output_dir", f"runs/{path.stem}")
    if not isinstance(output_dir, str) or not output_dir.strip():
        raise ConfigError(f"{path}: output_dir must be a path, got {output_dir!r}")
    return Study(path, output_dir, _mapping(data.get("base"), f"{path}: base"), _mapping(data.get("quick"), f"{path}: quick"),
                 rows)


def default_out(study: Study, quick: bool = False) -> Path:
    return Path(study.output_dir + ("_quick" if quick else ""))


def build_runs(study: Study, out: Path, quick: bool = False, sets: list[str] | None = None) -> list[Run]:
    """Every run's validated Config, in study order (row by row, seed by seed)."""
    if quick and not study.quick:
        raise ConfigError(f"--quick: {study.path} has no quick: section")
    extra = _mapping(parse_sets(sets or []), "--set")
    runs = []
    for row in study.rows:
        cfg = apply_overrides(Config(), study.base, f"{study.path}: base")
        cfg = apply_overrides(cfg, row.sets, f"{study.path}: row {row.name!r} set")
        if quick:
            cfg = apply_overrides(cfg, study.quick, f"{study.path}: quick")
        cfg = apply_overrides(cfg, extra, "--set")
        # The inner per-step bar only on a terminal; the study's own bar and log lines say where it is otherwise.
        cfg = replace(cfg, progress=cfg.progress and sys.stderr.isatty())
        for seed in row.seeds:
            run_cfg = replace(cfg, seed=seed, output_dir=str(out / row.name / f"seed_{seed}"))
            try:
                run_cfg.validate()
            except ConfigError as e:
                raise ConfigError(f"{study.path}: row {row.name!r}: {e}") from None
            runs.append(Run(row.name, seed, run_cfg))
    return runs


def check_unchanged(run: Run) -> None:
    """A run directory that trained under another config (an edited study, --quick runs under the same --out) is an
    error. One that failed before its first step holds nothing to misreport: it is retried under the new config."""
    saved_path = run.run_dir / "config.yaml"
    if not (saved_path.is_file() and (run.run_dir / "metrics.jsonl").is_file()):
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = run.cfg.to_dict()
    # Fields only one side knows come from a Config of another version: nothing to compare them with.
    for key in saved.keys() & now.keys():
        if key not in NOT_COMPARED and saved[key] != now[key]:
            raise ConfigError(f"{run.run_dir} was run with {key}={saved[key]!r}, the study now says {now[key]!r}; "
                              f"use another --out or delete that run directory")


def run_status(run_dir: Path) -> str:
    if (run_dir / "done.json").is_file():
        return "done"
    if (run_dir / "failed.json").is_file():
        return "failed"
    if (run_dir / "metrics.jsonl").is_file():
        return "partial"
    return "not run"


def run_one(run: Run) -> str:
    """Train one run to completion (fresh, resumed or restarted) unless it is done; returns its status after."""
    from selfrl.train import train  # torch and transformers load only once there is a run to train

    d, name = run.run_dir, f"{run.row}/seed_{run.seed}"
    status = run_status(d)
    has_metrics = (d / "metrics.jsonl").is_file()
    if status == "done":
        log.info("%s: done earlier, skipped", name)
        return "done"
    if status == "failed" and has_metrics:
        error = json.loads((d / "failed.json").read_text()).get("error")
        log.info("%s: failed earlier (%s); kept (delete %s to resume it)", name, error, d / "failed.json")
        return "failed"
    ckpt = latest_checkpoint(d) if has_metrics else None
    resume = ckpt is not None
    if resume:
        log.info("%s: interrupted; resuming from %s", name, ckpt.name)
    elif has_metrics:
        log.info("%s: interrupted before its first checkpoint; deleting %s and starting over", name, d)
        shutil.rmtree(d)
    else:
        log.info("%s: training", name)
    (d / "failed.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        train(run.cfg, resume=resume)
    except SelfRLError as e:
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / "failed.json", {"error": str(e), "wall_s": time.perf_counter() - t0, "time": time.time()})
        log.error("%s: failed: %s", name, e)
        return "failed"
    # wall_s covers this session only: a resumed run's earlier sessions are not recorded anywhere.
    write_json_atomic(d / "done.json", {"wall_s": time.perf_counter() - t0, "resumed": resume, "time": time.time()})
    return "done"


def read_outcome(run: Run) -> Outcome:
    d = run.run_dir
    status = run_status(d)
    metrics = read_metrics(d) if (d / "metrics.jsonl").is_file() else []
    marker = d / ("done.json" if status == "done" else "failed.json")
    info = json.loads(marker.read_text()) if status in ("done", "failed") else {}
    return Outcome(run.row, run.seed, status, run.cfg.to_dict(), metrics, info.get("error"), info.get("wall_s"),
                   bool(info.get("resumed")))


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
        summary.update({k: spread([s[k] for s in stats]) for k in STATS})
        summary["peak_step"] = statistics.fmean([s["peak_step"] for s in stats]) if stats else None
        summary["step_s"] = statistics.fmean(times) if times else None
        out.append(summary)
    return out


def detector_table(outcomes: list[Outcome], drop: float = 0.2) -> list[dict]:
    """Per study row, how the label-free collapse detector's first alarm relates to the fall of validation accuracy
    (report.collapse_events). False alarms are counted two ways: alarms in oracle runs (gold rewards do not collapse
    the way a vote does) and alarms in runs whose accuracy never fell."""
    out = []
    for row, runs in _by_row(outcomes).items():
        runs = [o for o in runs if o.metrics]
        events = [collapse_events(o.metrics, drop) for o in runs]
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


def plot_study(outcomes: list[Outcome], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for i, (row, runs) in enumerate(_by_row(outcomes).items()):
        runs = [o for o in runs if _counted(o)]
        for ax, (key, _) in zip(axes.flat, PANELS):
            curves = [[(r["step"], r[key]) for r in o.metrics if r.get(key) is not None] for o in runs]
            steps, mean, lo, hi = band([c for c in curves if c])
            if steps:
                color = f"C{i % 10}"
                ax.plot(steps, mean, color=color, label=f"{row} (n={len(runs)})", linewidth=1.4,
                        marker="o" if key == "val/accuracy" else None, markersize=3)
                ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
        for o in runs:  # each run's first collapse alarm, to read the detector's lead time off the accuracy curve
            alarm = collapse_events(o.metrics)["alarm_step"]
            if alarm is not None:
                axes.flat[0].axvline(alarm, color=f"C{i % 10}", linestyle=":", linewidth=1, alpha=0.7)
    for ax, (key, title) in zip(axes.flat, PANELS):
        ax.set_title(f"{title}: mean, min-max band over seeds", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110, format="png")  # format: the path may be a temp name
    plt.close(fig)


def _cell(s: dict | None, signed: bool = False) -> str:
    if s is None:
        return "—"
    f = "{:+.3f}" if signed else "{:.3f}"
    if s["std"] is None:
        return f.format(s["mean"])
    return f"{f.format(s['mean'])} ± {s['std']:.3f} [{f.format(s['min'])}, {f.format(s['max'])}]"


def _num(v, fmt: str = "{:.3f}") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def markdown(title: str, outcomes: list[Outcome]) -> str:
    rows = row_summaries(outcomes)
    md = [f"# {title}\n",
          "Validation accuracy is greedy on the labelled validation split. `final` is each run's last evaluation (its "
          "final checkpoint), chosen by no one; `peak` is shown for reference only (picking it would use labels). "
          "Cells are mean ± sample std [min, max] over the seeds counted: done runs and interrupted (partial) ones, "
          "whose `final` is only their latest evaluation; failed runs are listed, never averaged.\n",
          "| row | method | labels used for training | seeds done/total | start | peak | peak step (mean) | final | "
          "final − start | s/step (mean) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        seeds = f"{s['done']}/{s['seeds']}" + "".join(f", {s[k]} {k}" for k in ("partial", "failed") if s[k])
        md.append(f"| {s['row']} | {s['method']} | {s['labels_used']} | {seeds} | {_cell(s['start'])} | "
                  f"{_cell(s['peak'])} | {_num(s['peak_step'], '{:.1f}')} | {_cell(s['final'])} | "
                  f"{_cell(s['gain'], signed=True)} | {_num(s['step_s'], '{:.2f}')} |")
    md += ["\n## Runs\n",
           "| row | seed | status | start | peak (step) | final (step) | final − start | s/step | first alarm | "
           "fall step | lead | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        st, ev = run_stats(o.metrics), collapse_events(o.metrics)
        wall = _num(o.wall_s, "{:.1f}") + (" (last session)" if o.resumed else "")
        nums = (f"{st['start']:.3f} | {st['peak']:.3f} ({st['peak_step']}) | {st['final']:.3f} ({st['final_step']}) | "
                f"{st['gain']:+.3f} | {_num(st['step_s'], '{:.2f}')}") if st else "— | — | — | — | —"
        md.append(f"| {o.row} | {o.seed} | {o.status} | {nums} | {_num(ev['alarm_step'], '{}')} | "
                  f"{_num(ev['fall_step'], '{}')} | {_num(ev['lead'], '{:+d}')} | {wall} |")
    md += ["\n## Collapse detector\n",
           "The fall is the first evaluation whose accuracy is below 0.8 × the best accuracy so far; lead = fall step − "
           "first alarm step (positive: the label-free alarm came first). `watched`: runs that logged the detector.\n",
           "| row | runs | watched | alarmed | fell | mean lead (steps) | alarms in oracle runs | alarms without a fall |",
           "|---|---|---|---|---|---|---|---|"]
    for d in detector_table(outcomes):
        md.append(f"| {d['row']} | {d['runs']} | {d['watched']} | {d['alarmed']} | {d['fell']} | "
                  f"{_num(d['mean_lead'], '{:+.1f}')} | {d['oracle_alarms']} | {d['alarms_without_fall']} |")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        md += ["\n## Failed runs\n"] + [f"- {o.row}/seed_{o.seed}: {o.error}" for o in failed]
    md.append("\n![curves](curves.png)\n\nCurves: the mean over the seeds that logged each step, with their min–max band; "
              "dotted lines mark each run's first collapse alarm.\n")
    return "\n".join(md)


def _write_replacing(path: Path, write) -> None:
    """write(temp path), then rename over `path`. The temp name is this process's: two studies sharing an --out
    (disjoint --only rows, side by side) may report at once, and neither may leave a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_study_report(title: str, outcomes: list[Outcome], out: Path) -> str:
    """report.md, curves.png and summary.json (the tables as data) in `out`; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    _write_replacing(out / "curves.png", lambda p: plot_study(outcomes, p))
    md = markdown(title, outcomes)
    _write_replacing(out / "report.md", lambda p: p.write_text(md))
    data = {"rows": row_summaries(outcomes), "detector": detector_table(outcomes)}
    _write_replacing(out / "summary.json", lambda p: p.write_text(json.dumps(data, indent=2)))
    return md


def run_study(config: str | Path, out: str | Path | None = None, quick: bool = False, only: list[str] | None = None,
              sets: list[str] | None = None, report_only: bool = False) -> tuple[Path, list[Outcome]]:
    """Run the study's (selected) runs that are not done, then report on all of them.

    Returns the output directory and the selected runs' outcomes (a caller exits non-zero if any failed)."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    study = load_study(config)
    out = Path(out) if out else default_out(study, quick)
    names = [r.name for r in study.rows]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise ConfigError(f"--only: no row named {unknown[0]!r}; the rows are {', '.join(names)}")
    runs = build_runs(study, out, quick, sets)
    for run in runs:
        check_unchanged(run)
    selected = [r for r in runs if not only or r.row in only]
    if not report_only:
        with logging_redirect_tqdm(), tqdm(selected, desc="study", unit="run", disable=None) as bar:
            for k, run in enumerate(bar, 1):
                bar.set_postfix_str(f"{run.row}/seed_{run.seed}")
                log.info("[study %d/%d] %s seed %d -> %s", k, len(selected), run.row, run.seed, run.run_dir)
                run_one(run)
    outcomes = [read_outcome(r) for r in runs]  # the report covers the whole study, whatever --only ran
    write_study_report(f"selfrl study: {study.path.name}" + (" (quick)" if quick else ""), outcomes, out)
    picked = {(r.row, r.seed) for r in selected}
    return out, [o for o in outcomes if (o.row, o.seed) in picked]
