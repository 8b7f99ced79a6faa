"""Metrics to metrics.jsonl (always) and TensorBoard (when installed and enabled). Logging never breaks training."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _clean(v):
    """JSON-safe scalar: NaN/inf become null so every line stays valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    """One JSON object per line with key `step`; the same scalars to TensorBoard under the run directory."""

    def __init__(self, run_dir: Path, report_to: str = "tensorboard", truncate_after: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if truncate_after is not None and self.path.exists():
            # Resume: drop lines past the checkpoint so the replayed steps are not logged twice.
            # A line cut short by a kill mid-write is dropped too; the rewrite is atomic (temp file + rename).
            keep = [row for row in _rows(self.path.read_text()) if row["step"] <= truncate_after]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in keep))
            os.replace(tmp, self.path)
        self.file = open(self.path, "a")
        self.tb = None
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception as e:  # noqa: BLE001 - a missing or broken backend must not stop a run
                log.warning("TensorBoard logging disabled: %s", e)

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            try:
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                        self.tb.add_scalar(k, v, step)
            except Exception as e:  # noqa: BLE001
                log.warning("TensorBoard write failed, disabling it: %s", e)
                self.tb = None

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class NullLogger:
    """What every process but process 0 logs to: nothing (one metrics.jsonl per run, however many processes)."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _rows(text: str) -> list[dict]:
    """Parsed metric rows; a last line cut short by a crash mid-write is skipped (every earlier line is whole)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rows = []
    for i, ln in enumerate(lines):
        try:
            rows.append(json.loads(ln))
        except ValueError:
            if i != len(lines) - 1:
                raise
            log.warning("metrics.jsonl: dropping a partial last line (the run was killed while logging)")
    return rows


def read_metrics(run_dir: Path) -> list[dict]:
    return _rows((Path(run_dir) / "metrics.jsonl").read_text())
