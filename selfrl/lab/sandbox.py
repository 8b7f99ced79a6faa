"""One child run of `selfrl evolve`, out of the search's reach: its own process and session, a wall-time limit, an
address-space limit, and a score read back from the files it wrote (issue 18, item 4).

The search never imports the loop it evaluates: a child is `python -m selfrl train CHILD.yaml` (or the config's
`command` in its place, e.g. a tiny script in the tests) in a subprocess. Whatever the child does (crash, hang,
allocate without bound, die of a signal) becomes a status in the archive, never an exception in the search.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SCORE_KEY = "val/accuracy"  # the score: greedy accuracy on the task's labelled val split, computed by the evaluator
LOG_TAIL_CHARS = 2000
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class RunResult:
    status: str  # ok, crashed (non-zero exit), timeout, no_score (exited 0 but wrote no val/accuracy)
    score: float | None
    safety: dict  # safety/<category> of the last evaluation that scored probes (empty without probes)
    metrics: dict  # the numbers of the last row holding val/accuracy: what the proposer reads
    rc: int | None
    wall_s: float
    log_tail: str


def default_command() -> list[str]:
    """The child: a plain `selfrl train` in a fresh interpreter (this one, so the same environment)."""
    return [sys.executable, "-m", "selfrl", "train"]


def _limits(memory_mb: int | None) -> None:
    """In the child, before exec: cap its address space, and have the kernel kill it when the search dies (so a
    SIGKILLed search leaves no orphan writing into a run directory that the resumed search is about to redo)."""
    if memory_mb is not None:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the search died between fork and prctl
            os._exit(1)


def run_child(command: list[str], config_path: Path, run_dir: Path, log_path: Path, timeout_s: float,
              memory_mb: int | None) -> RunResult:
    """Run one child to completion or to its time limit (then its whole process group is killed); read its score."""
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*command, str(config_path)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: _limits(memory_mb))
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and anything it started, nothing else
            proc.wait()
            rc = None
    wall = time.monotonic() - start
    tail = log_path.read_bytes()[-LOG_TAIL_CHARS:].decode("utf-8", "replace")
    if rc is None:
        return RunResult("timeout", None, {}, {}, None, wall, tail + f"\n[killed after {timeout_s:g} s]")
    if rc != 0:
        return RunResult("crashed", None, {}, {}, rc, wall, tail)
    score, safety, metrics = read_score(run_dir)
    return RunResult("ok" if score is not None else "no_score", score, safety, metrics, rc, wall, tail)


def read_score(run_dir: Path) -> tuple[float | None, dict, dict]:
    """(score, safety, metrics) from the child's metrics.jsonl: `val/accuracy` of the last row that has it, the
    safety/* scores of the last row that has them. A torn or non-JSON line (a killed writer) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None, {}, {}
    score, safety, metrics = None, {}, {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        value = row.get(SCORE_KEY)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            score = float(value)
            metrics = {k: v for k, v in sorted(row.items())[:40]
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        scores = {k: v for k, v in row.items() if k.startswith("safety/") and isinstance(v, (int, float))}
        if scores:
            safety = scores
    return score, safety, metrics


def cache_key(config_text: str, extra: str) -> str:
    """A child's identity for the result cache: its config without output_dir, plus the evaluator's and the
    editable file's digests. selfrl runs are deterministic given their config, so equal keys give equal results."""
    return hashlib.sha256(f"{config_text}\n{extra}".encode()).hexdigest()[:32]
