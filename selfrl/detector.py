"""Label-free collapse detection (issue 3): training-time signals only, never a gold answer or a validation score.

SRT's collapse (methods.md §2) has a signature visible without labels: the pseudo-reward jumps towards 1, the
vote becomes unanimous, the policy's entropy falls, the answers stop depending on the prompt ("the answer is 1"),
and the policy drifts away from its anchor. Each signal compares a moving average over the last `window` steps
with the same average over the run's first `window` steps (the baseline, taken from the start model's regime).
An alarm needs `min_signals` of them at once: each alone also moves when a run is simply learning (an `oracle`
run's reward and agreement rise too), which is what the false-alarm count on `oracle` runs measures.

The state is a function of the logged metrics, so a resumed run rebuilds it by replaying metrics.jsonl.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

# (metric key, signal name, test(now, base) -> fired). Thresholds are ours: the papers describe the signature, not
# numbers; they were set on the organism's srt runs (docs/results.md reports the lead time and false alarms they give).
SIGNALS = [
    ("reward/pseudo", "reward_jump", lambda now, base: now - base > 0.15),
    ("vote/majority_share", "majority_share", lambda now, base: now - base > 0.15),
    ("vote/unanimous_groups", "unanimous", lambda now, base: now - base > 0.20),
    ("policy/entropy", "entropy_drop", lambda now, base: now < 0.6 * base),
    ("vote/answer_diversity", "diversity_drop", lambda now, base: now < 0.6 * base),
    ("anchor/kl", "anchor_kl", lambda now, base: now > 3.0 * base + 0.05),
]


@dataclass
class Reading:
    fired: list[str]  # names of the signals over their threshold this step
    alarm: bool  # at least min_signals fired


class CollapseDetector:
    def __init__(self, window: int = 20, min_signals: int = 2):
        self.window, self.min_signals = window, min_signals
        self.base: dict[str, float] = {}
        self.first: dict[str, list[float]] = {key: [] for key, _, _ in SIGNALS}
        self.recent: dict[str, deque] = {key: deque(maxlen=window) for key, _, _ in SIGNALS}

    def reset_recent(self) -> None:
        """After a rollback the restored weights start a fresh window (the baseline is kept)."""
        for q in self.recent.values():
            q.clear()

    def update(self, metrics: dict) -> Reading:
        for key, _, _ in SIGNALS:
            v = metrics.get(key)
            if v is None or not math.isfinite(v):
                continue
            if len(self.first[key]) < self.window:
                self.first[key].append(v)
                if len(self.first[key]) == self.window:
                    self.base[key] = sum(self.first[key]) / self.window
            self.recent[key].append(v)
        fired = []
        for key, name, test in SIGNALS:
            q = self.recent[key]
            if key in self.base and len(q) == self.window and test(sum(q) / len(q), self.base[key]):
                fired.append(name)
        return Reading(fired, len(fired) >= self.min_signals)

    def replay(self, rows: list[dict]) -> None:
        """Rebuild the state from logged rows (resume): the same updates, and the same window resets."""
        for row in rows:
            if row.get("step", 0) == 0:
                continue
            self.update(row)
            if row.get("detector/rolled_back_to") is not None:
                self.reset_recent()
