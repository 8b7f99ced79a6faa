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
import re
import shutil
import sys
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import yaml

from selfrl.checkpoint import latest_checkpoint, write_json_atomic
from selfrl.config import parse_sets
from selfrl.grpo_config import Config, apply_overrides
from selfrl.errors import ConfigError, SelfRLError
from selfrl.logger import read_metrics
from selfrl.lab.report import Outcome, write_study_report

log = logging.getLogger("selfrl")

TOP_KEYS = ("output_dir", "base", "seeds", "quick", "rows")
ROW_KEYS = ("name", "set", "seeds")
PER_RUN = ("seed", "output_dir")  # the study sets these for each run; a file or --set may not
# May differ between sessions of one run: where it lives (an absolute or a relative --out) and how it is displayed.
NOT_COMPARED = ("output_dir", "progress", "report_to", "torch_threads")
ROW_NAME = re.compile(r"^[A-Za-z0-9_+=-][A-Za-z0-9_.+=-]*$")  # a directory name, never a path


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


def study_path(name: str) -> Path:
    """A study file, or the name of a built-in one: `quick` -> selfrl/lab/configs/study_quick.yaml, `study` ->
    selfrl/lab/configs/study.yaml."""
    path = Path(name)
    if path.is_file():
        return path
    configs = Path(str(resources.files("selfrl.lab") / "configs"))
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
    from selfrl.grpo import train  # torch and transformers load only once there is a run to train
    from selfrl.rundir import RunDirBusy, lock_run_dir, unlock

    d, name = run.run_dir, f"{run.row}/seed_{run.seed}"
    if d.is_dir():  # a second study on the same directory (side-by-side --only halves that overlap) leaves it alone
        try:
            unlock(lock_run_dir(d))
        except RunDirBusy as e:
            log.warning("%s: skipped: %s", name, e)
            return "busy"
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
    except RunDirBusy as e:  # taken by another process since the check above: its run, not a failure of this one
        log.warning("%s: skipped: %s", name, e)
        return "busy"
    except Exception as e:  # noqa: BLE001 - one row's failure (its task, its model, a bug) is recorded, never the study's end
        error = str(e) if isinstance(e, SelfRLError) else f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / "failed.json", {"error": error, "wall_s": time.perf_counter() - t0, "time": time.time()})
        log.error("%s: failed: %s", name, error)
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
