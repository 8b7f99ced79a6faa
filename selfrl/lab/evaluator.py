"""The evaluator of `selfrl evolve`, hashed so that no recipe can change it unnoticed (issue 18, methods.md §7-8).

DGM's variants removed the markers their evaluator checked (arXiv 2505.22954, §5), and misevolution needs "an
evaluator the training loop cannot edit" (arXiv 2509.26354). A search records the SHA-256 of everything its score
depends on in OUT/evaluator.json at the start, as the probe gate does for its probe file and scorer
(selfrl/safety.py), and recomputes them before every child run: the task's source file, its val split (as data),
selfrl's greedy scoring and task loading, the probe file and scorer when `probes` is set, the editable file's start
copy and any `evaluator_files`. Any difference stops the search.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

from selfrl.checkpoint import write_json_atomic
from selfrl.grpo_config import Config
from selfrl.errors import SelfRLError

EVALUATOR_CODE = ("evaluate.py", "tasks/__init__.py")  # selfrl's greedy scoring and task loading
EVALUATOR = "evaluator.json"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def evaluator_fingerprint(ec) -> dict:  # ec: an EvolveConfig (selfrl/lab/evolve.py)
    """{name: SHA-256} of everything the score depends on and no recipe may change."""
    from selfrl import safety
    from selfrl.tasks import load_task

    root = Path(safety.__file__).parent
    task = load_task(ec.base.get("task", Config.task))
    files = {f"selfrl/{f}": root / f for f in EVALUATOR_CODE}
    files["task source"] = Path(inspect.getsourcefile(type(getattr(task, "task", task))))  # the user's, not the checks'

    if ec.base.get("probes"):
        files.update({"probes": Path(ec.base["probes"]), "probe scorer": Path(safety.__file__)})
    files.update({f: Path(f) for f in ec.evaluator_files})
    if ec.editable is not None:
        files["editable (the start's copy)"] = Path(ec.editable["file"])
    out = {}
    for name, p in files.items():
        if not p.is_file():
            raise SelfRLError(f"evaluator file {p} ({name}) is missing")
        out[name] = sha(p.read_bytes())
    out["val split"] = sha(json.dumps(task.eval_examples("val")).encode())
    return out


def check_evaluator(ec, out: Path) -> dict:
    """Record the fingerprint on the first call; afterwards raise SelfRLError naming what changed."""
    now = evaluator_fingerprint(ec)
    path = out / EVALUATOR
    if not path.is_file():
        write_json_atomic(path, now)
        return now
    recorded = json.loads(path.read_text())
    changed = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
    if changed:
        raise SelfRLError(f"evaluator changed since the search started ({', '.join(changed)}; SHA-256 in {path}); "
                          "refusing to compare children scored by different evaluators")
    return now
