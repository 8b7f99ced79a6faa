"""Label-free collapse detection (issues 3 and 15): training-time signals only, never a gold answer or a validation
score.

Two kinds of signal, each compared with its own baseline from the run's start:
  step signals   a training metric logged every step (policy/entropy), averaged over the last `window` steps;
                 the baseline is the average over the run's first `window` steps
  canary signals a canary/* metric (selfrl/canary.py) logged every `detector_every` steps, averaged over the last
                 CHECKS checks; the baseline is the first check(s) listed in the signal (the start model's, step 0,
                 where the start itself is the reference; the first trained checks where step 0 is trivially 0)
An alarm needs `min_signals` of them at once.

Issue 3's signals (reward jump, majority share of the training vote, unanimous groups, anchor KL) are gone: each
also moves when a run is simply learning (an `oracle` run's reward and agreement rise too), and in the organism-v1
study their first alarm came ~100 steps after the fall and fired on every oracle run.

The signals below and their thresholds were chosen on calibration runs only (seeds 100-101 of
selfrl/lab/configs/detector_calibration.yaml) and then FROZEN here; docs/results.md reports them on the study's
seeds 0-2, which never informed them. scripts/detector_replay.py replays logged runs under other settings.

The state is a function of the logged metrics, so a resumed run rebuilds it by replaying metrics.jsonl.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

CHECKS = 2  # canary checks in a canary signal's moving average (ours: one check's k = 8 votes are noisy)


RULES = {  # how a signal's moving average `now` is compared with its baseline `base`, given its threshold t
    "below_ratio": lambda now, base, t: now < t * base,  # fell to under t x its start level
    "above_delta": lambda now, base, t: now - base > t,  # rose by more than t
    "below_delta": lambda now, base, t: now < base - t,  # fell by more than t
}


@dataclass(frozen=True)
class Signal:
    key: str  # the logged metric
    name: str
    rule: str  # a RULES key
    threshold: float
    canary: bool = False  # a canary/* metric (every detector_every steps) rather than a per-step one
    base_checks: int = 1  # canary: how many of the first checks form the baseline (step 0's is the start model's)
    skip_start: bool = False  # canary: the baseline starts after step 0 (a signal that is 0 there by construction)

    def test(self, now: float, base: float) -> bool:
        return RULES[self.rule](now, base, self.threshold)


# FROZEN after calibration (see the module docstring); thresholds are ours, the papers give none.
SIGNALS = [
    # SRT's fall on the organism comes with a slow fall of the policy's token entropy (an oracle run's stays level)
    Signal("policy/entropy", "entropy_drop", "below_ratio", 0.92),
    # the canary vote becomes more unanimous than the start model's, a larger rise than learning gives
    Signal("canary/majority_share", "canary_agreement", "above_delta", 0.12, canary=True),
    # TTRL-Guard: the majority answers stop changing before the wrong ones lock in
    Signal("canary/flip_rate", "flips_stop", "below_delta", 0.10, canary=True, base_checks=2, skip_start=True),
]


@dataclass
class Reading:
    fired: list[str]  # names of the signals over their threshold this step
    alarm: bool  # at least min_signals fired
    onset: bool = False  # an alarm where the step before had none (what a log line reports)


class CollapseDetector:
    def __init__(self, window: int = 20, min_signals: int = 2, signals: list[Signal] | None = None):
        """`signals`: SIGNALS unless given (scripts/detector_replay.py tries other thresholds this way)."""
        self.window, self.min_signals = window, min_signals
        self.signals = list(SIGNALS if signals is None else signals)
        self.base: dict[str, float] = {}
        self.first: dict[str, list[float]] = {s.name: [] for s in self.signals}
        self.recent: dict[str, deque] = {s.name: deque(maxlen=CHECKS if s.canary else window) for s in self.signals}
        self.fired: dict[str, bool] = {s.name: False for s in self.signals}
        self.alarmed = False

    def reset_recent(self) -> None:
        """After a rollback the restored weights start a fresh window (the baseline is kept)."""
        for q in self.recent.values():
            q.clear()
        self.fired = {name: False for name in self.fired}
        self.alarmed = False

    def update(self, metrics: dict) -> Reading:
        """One logged row. A canary signal keeps its last verdict between checks."""
        for s in self.signals:
            v = metrics.get(s.key)
            if v is None or not math.isfinite(v):
                continue
            if s.canary and s.skip_start and metrics.get("step") == 0:
                continue
            need = s.base_checks if s.canary else self.window
            if len(self.first[s.name]) < need:
                self.first[s.name].append(v)
                if len(self.first[s.name]) == need:
                    self.base[s.name] = sum(self.first[s.name]) / need
                    if s.canary:
                        continue  # a check in the baseline is not also compared with it
            q = self.recent[s.name]
            q.append(v)
            if s.name in self.base and len(q) == q.maxlen:
                self.fired[s.name] = s.test(sum(q) / len(q), self.base[s.name])
        fired = [s.name for s in self.signals if self.fired[s.name]]
        alarm = len(fired) >= self.min_signals
        onset, self.alarmed = alarm and not self.alarmed, alarm
        return Reading(fired, alarm, onset)

    def replay(self, rows: list[dict]) -> None:
        """Rebuild the state from logged rows (resume): the same updates (step 0's row carries the start model's
        canary check), and the same window resets."""
        for row in rows:
            self.update(row)
            if row.get("detector/rolled_back_to") is not None:
                self.reset_recent()


def first_alarm(rows: list[dict], window: int = 20, min_signals: int = 2, signals: list[Signal] | None = None) -> int | None:
    """The step of the first alarm the detector raises over logged rows (with `signals` in place of SIGNALS, to
    try other thresholds), replayed up to the first rollback: after one, the logged run is its response's."""
    det = CollapseDetector(window, min_signals, signals)
    for r in rows:
        if det.update(r).alarm:
            return r["step"]
        if r.get("detector/rolled_back_to") is not None:
            return None  # an alarm of an older detector acted here; nothing after it is this one's to judge
    return None
