"""Child for the many-process option tests (tests/test_distributed_options.py): record which prompts each step
trained on, per process, and optionally make the collapse detector fire whenever its window is full; then run the
CLI with the remaining arguments.

    accelerate launch ... -m tests.dist_child RECORD_DIR always|real train --set ...
"""
from __future__ import annotations

import json
import sys
import math
from pathlib import Path



def arm(record_dir: Path, detector_mode: str, setattr_=setattr) -> None:
    """Wrap grpo.sample_batch so every call appends {"step", "ids", "drawn"} to RECORD_DIR/ids_<rank>.jsonl."""
    from selfrl import detector, grpo
    from selfrl import distributed as dist

    real = grpo.sample_batch

    def recording(s, step, sizes, amp):
        ids, pol, mom, drawn = real(s, step, sizes, amp)
        with open(Path(record_dir) / f"ids_{dist.rank()}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "ids": ids, "drawn": drawn}) + "\n")
        return ids, pol, mom, drawn

    setattr_(grpo, "sample_batch", recording)
    if detector_mode == "always":
        setattr_(detector, "SIGNALS", [detector.Signal("reward/pseudo", "always", "above_delta", -math.inf)])


def recorded(record_dir: Path) -> dict[int, list[int]]:
    """{step: the step's prompt ids over all processes, process 0's first} from the files `arm` wrote."""
    out: dict[int, list[int]] = {}
    for path in sorted(Path(record_dir).glob("ids_*.jsonl"), key=lambda p: int(p.stem[4:])):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out.setdefault(row["step"], []).extend(row["ids"])
    return out


if __name__ == "__main__":
    from selfrl.cli import main

    arm(Path(sys.argv[1]), sys.argv[2])
    raise SystemExit(main(sys.argv[3:]))
