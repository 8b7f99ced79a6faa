"""Metrics to metrics.jsonl (always) and to the backends in `report_to`: TensorBoard (default), Weights & Biases,
MLflow, or a comma list of them. Logging never breaks training: a backend whose package is missing, or that fails
to start or to write, logs one warning and is dropped; the run and metrics.jsonl go on.

wandb and mlflow are not dependencies of selfrl; install the one you report to. wandb's project is $WANDB_PROJECT
(default "selfrl"), MLflow's experiment and tracking URI come from its own environment variables
($MLFLOW_EXPERIMENT_NAME, $MLFLOW_TRACKING_URI). Both get the run directory's name as the run name and the resolved
config (config.yaml) as the run's config / params.

Only the main process may log: train.py constructs the run's one MetricsLogger, in `train()`, and nowhere else.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import yaml

from selfrl.errors import SelfRLError

log = logging.getLogger(__name__)

BACKENDS = ("tensorboard", "wandb", "mlflow")


def parse_report_to(value: str) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; 'none' -> []. Raises ValueError naming a bad entry."""
    names = [n.strip() for n in value.split(",")]
    if names == ["none"]:
        return []
    for n in names:
        if n not in BACKENDS:
            raise ValueError(f"{n!r} is not one of {', '.join(BACKENDS)} (or 'none' alone)")
    return list(dict.fromkeys(names))


def _clean(v):
    """JSON-safe scalar: NaN/inf become null so every line stays valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _scalars(metrics: dict) -> dict[str, float]:
    """The finite numbers among the metrics (None, bools, strings and NaN/inf are not plotted)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, scalars: dict) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "selfrl"), name=run_dir.name, dir=str(run_dir),
                              config=config)

    def log(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, run_dir: Path, config: dict):
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({k: str(v) for k, v in config.items()})  # params are strings in MLflow

    def log(self, step: int, scalars: dict) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


_NAMES = {"tensorboard": "TensorBoard", "wandb": "wandb", "mlflow": "MLflow"}


def _open(name: str, run_dir: Path, config: dict):
    """The backend `name`, or None (with a warning) when its package is missing or it fails to start."""
    cls = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}[name]
    try:
        return cls(run_dir, config)
    except Exception as e:  # noqa: BLE001 - a missing or broken backend must not stop a run
        log.warning("%s logging disabled: %s: %s", _NAMES[name], type(e).__name__, e)
        return None


class MetricsLogger:
    """One JSON object per line with key `step`; the same scalars to each backend of `report_to`."""

    def __init__(self, run_dir: Path, report_to: str = "tensorboard", truncate_after: int | None = None):
        run_dir = Path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        if truncate_after is not None and self.path.exists():
            # Resume: drop lines past the checkpoint so the replayed steps are not logged twice.
            # A line cut short by a kill mid-write is dropped too; the rewrite is atomic (temp file + rename).
            keep = [row for row in _rows(self.path) if row["step"] <= truncate_after]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in keep))
            os.replace(tmp, self.path)
        self.file = open(self.path, "a")
        names = parse_report_to(report_to)
        config = {}
        if names and (run_dir / "config.yaml").is_file():  # the resolved config train.py wrote, for the run's params
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        self.backends = {n: b for n in names if (b := _open(n, run_dir, config)) is not None}

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        scalars = _scalars(metrics)
        for name, backend in list(self.backends.items()):
            try:
                backend.log(step, scalars)
            except Exception as e:  # noqa: BLE001
                log.warning("%s write failed, disabling it: %s: %s", _NAMES[name], type(e).__name__, e)
                del self.backends[name]

    def close(self) -> None:
        self.file.close()
        for name, backend in self.backends.items():
            try:
                backend.close()
            except Exception as e:  # noqa: BLE001 - the metrics are on disk already; a failing close loses nothing
                log.warning("%s close failed: %s: %s", _NAMES[name], type(e).__name__, e)
        self.backends = {}


class NullLogger:
    """What every process but process 0 logs to: nothing (one metrics.jsonl per run, however many processes)."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _rows(path: Path) -> list[dict]:
    """Parsed metric rows. A last line cut short by a crash mid-write (unparseable, no newline after it) is dropped with
    a warning, since a resume must go on from such a run (MetricsLogger rewrites the file without it); any other bad
    line, a missing or unreadable file is a SelfRLError naming the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SelfRLError(f"{path} not found: not a run directory, or its metrics were moved or deleted") from None
    except UnicodeDecodeError as e:
        raise SelfRLError(f"{path}: not UTF-8 text (byte {e.start}): not a metrics file, or it is damaged") from None
    except OSError as e:
        raise SelfRLError(f"{path}: cannot read: {e.strerror}") from None
    lines = text.splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    rows = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except ValueError as e:
            if i == last and not text.endswith("\n"):
                log.warning("%s: dropping a partial last line %d (the run was killed while logging)", path, i + 1)
                continue
            raise SelfRLError(f"{path} line {i + 1}: not valid JSON ({e.msg} at column {e.colno}); "
                              "the file is damaged") from None
        if not (isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool)):
            raise SelfRLError(f"{path} line {i + 1}: not a metrics row (a JSON object with an integer \"step\")")
        rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order (see `_rows` for what is tolerated)."""
    return _rows(Path(run_dir) / "metrics.jsonl")
