"""The options that decide from a whole step or run (issue 20, item 4) on 2 CPU processes (gloo) against 1 process:
online_filter, offline_labels, curriculum_fraction, the collapse detector's rollback, early stopping and the probe
gate. Each 2-process run goes through the real CLI under `accelerate launch` (tests/dist_child.py records which
prompts each process trained on at each step); the 1-process run is the same config in this process.

What must match. Both runs sample every prompt from its own seed (seed_per_prompt), so rollouts, votes, filter
decisions and greedy answers are the same; float sums differ in order by a few ulps (tests/test_distributed.py
derives COUNT_TOL / METRIC_TOL / WEIGHT_TOL). So every decision must be identical: the prompts kept and trained
(in order), the start model's labels and shares, the curriculum pool, the steps rolled back to, the early-stop
step, the gate's alarms and promotions; their weights agree within WEIGHT_TOL.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from selfrl.grpo import train
from selfrl.grpo_config import load_config
from selfrl.logger import read_metrics
from selfrl.mitigations import easiest
from selfrl.tasks import load_task
from tests import dist_child
from tests.conftest import policy_weights, tiny_sets
from tests.test_distributed import COUNT_TOL, COUNTS, ROOT, WEIGHT_TOL, _free_port, as_args

FAST = dict(torch_threads=1, eval_limit=8, num_votes=4)


def launch2(record: Path, detector: str, sets: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m tests.dist_child RECORD DETECTOR train --set ...`."""
    env = {**os.environ, "HF_HOME": str(tmp / "hf_home"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "tests.dist_child", str(record), detector, "train",
           *as_args(sets)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def one_and_two(tmp: Path, model_dir: Path, monkeypatch, detector: str = "real", **sets):
    """Run `sets` on 1 process (here) and on 2 (launched); returns the two run dirs and the two id records."""
    one, two = tmp / "one", tmp / "two"
    rec1, rec2 = tmp / "rec1", tmp / "rec2"
    rec1.mkdir()
    rec2.mkdir()
    with monkeypatch.context() as m:
        dist_child.arm(rec1, detector, m.setattr)
        train(load_config(None, tiny_sets(model_dir, one, seed_per_prompt="true", **FAST, **sets)))
    proc = launch2(rec2, detector, tiny_sets(model_dir, two, **FAST, **sets), tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return one, two, dist_child.recorded(rec1), dist_child.recorded(rec2)


def same_decisions(one: Path, two: Path, keys: list[str]) -> list[dict]:
    """The logged decisions (`keys`) equal row by row, the discrete metrics within COUNT_TOL; returns run one's rows."""
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for k in keys:
            assert x.get(k) == y.get(k), (x["step"], k, x.get(k), y.get(k))
        for k in COUNTS:
            if x.get(k) is not None:
                assert abs(x[k] - y[k]) <= COUNT_TOL, (x["step"], k, x[k], y[k])
    return a


def close_weights(one: Path, two: Path, step: int) -> None:
    x, y = policy_weights(one / f"step_{step:06d}"), policy_weights(two / f"step_{step:06d}")
    assert x.keys() == y.keys() and max((x[k] - y[k]).abs().max().item() for k in x) <= WEIGHT_TOL


@pytest.fixture(scope="module")
def sixteen_prompts(tmp_path_factory) -> Path:
    """16 of arith's training questions as a train_file: the start model's votes then cover 16 prompts, not 4000."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in load_task("arith").train_prompts()[:16]))
    return path


def test_online_filter_and_curriculum_on_two_processes(tiny_model_dir, tmp_path, monkeypatch, sixteen_prompts):
    # temperature 0.3: the tiny model's 4 votes agree (share >= 0.5) on some prompts, not on all
    one, two, ids1, ids2 = one_and_two(tmp_path, tiny_model_dir, monkeypatch, method="srt", max_steps=3,
                                       train_file=str(sixteen_prompts), start_votes=4, curriculum_fraction=0.5,
                                       online_filter=0.5, temperature=0.3, gold_diagnostics="false",
                                       learning_rate=1e-3)
    # curriculum: process 0 voted, as 1 process does; both trained on the easiest half by that file
    votes1, votes2 = (json.loads((d / "start_votes.json").read_text()) for d in (one, two))
    assert votes1 == votes2 and len(votes1["shares"]) == 16
    pool = set(easiest(votes1["shares"], 0.5))  # round(0.5 * 16) = 8 prompts
    # online_filter: the same prompts kept, in the same order, at every step; all from the curriculum's pool
    assert ids1 == ids2 and sorted(ids1) == [1, 2, 3]
    assert all(ids and set(ids) <= pool for ids in ids1.values())
    rows = same_decisions(one, two, ["filter/prompts_kept"])
    kept = [r["filter/prompts_kept"] for r in rows[1:]]
    assert min(kept) < 1, kept  # the filter dropped prompts: the comparison covers its decisions
    assert any(len(ids) < 2 for ids in ids1.values())  # a step where one process held no prompt (b = 0) and waited
    assert max(r["grad/norm"] for r in rows[1:]) > 0  # and steps that trained
    close_weights(one, two, 3)


def test_detector_rollback_and_offline_labels_on_two_processes(tiny_model_dir, tmp_path, monkeypatch,
                                                                sixteen_prompts):
    one, two, ids1, ids2 = one_and_two(tmp_path, tiny_model_dir, monkeypatch, detector="always", method="mgrpo",
                                       max_steps=6, train_file=str(sixteen_prompts), offline_labels="true",
                                       start_votes=4, collapse_detector="rollback", detector_window=2,
                                       detector_min_signals=1, max_rollbacks=1, save_total_limit="null",
                                       gold_diagnostics="false")
    # offline_labels: process 0 voted once, as 1 process does; every process trained against that file
    assert json.loads((one / "start_votes.json").read_text()) == json.loads((two / "start_votes.json").read_text())
    assert ids1 == ids2
    # The detector's signal fires whenever its window of 2 is full: step 1 (half a window) is saved healthy; step 2
    # fires: back to step 1, lr halved; step 3 refills the window (healthy); step 4 fires past max_rollbacks=1:
    # back to step 3, and the run stops there, on both processes.
    rows = same_decisions(one, two, ["detector/rolled_back_to", "detector/alarm", "lr"])
    assert [r.get("detector/rolled_back_to") for r in rows] == [None, None, 1, None, 3]
    assert rows[3]["lr"] == pytest.approx(0.5e-2)
    for f in ("policy/model.safetensors", "momentum.safetensors"):  # every process restored step 3 (the save
        x, y = (load_file(two / s / f) for s in ("step_000003", "step_000004"))  # checks the replicas agree)
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x), f
    close_weights(one, two, 4)


def test_early_stopping_on_two_processes(tiny_model_dir, tmp_path, monkeypatch):
    one, two, ids1, ids2 = one_and_two(tmp_path, tiny_model_dir, monkeypatch, method="srt", max_steps=8,
                                       early_stopping_patience=2, early_stopping_examples=16, save_every=0)
    assert ids1 == ids2
    rows = same_decisions(one, two, ["stop/accuracy", "stop/restored"])  # the 16 stop examples split 8 + 8
    last = rows[-1]
    assert last["step"] < 8 and last["stop/restored"] is not None  # both stopped early, at the same step
    assert read_metrics(two)[-1]["step"] == last["step"]
    best = last["stop/restored"]
    restored = policy_weights(two / f"step_{last['step']:06d}")
    assert all((v == policy_weights(two / f"step_{best:06d}")[k]).all() for k, v in restored.items())
    close_weights(one, two, last["step"])


def test_probe_gate_rollback_on_two_processes(tiny_model_dir, tmp_path, monkeypatch):
    from tests.test_safety import tiny_probes

    probes, _ = tiny_probes(tiny_model_dir, tmp_path / "probes.jsonl")  # probes the start model meets exactly
    one, two, ids1, ids2 = one_and_two(tmp_path, tiny_model_dir, monkeypatch, method="srt", probes=str(probes),
                                       probe_tolerance=0.0, gate_action="rollback", learning_rate=0.05,
                                       max_steps=2, save_total_limit="null")
    assert ids1 == ids2
    a = read_metrics(one)
    safety = sorted({k for r in a for k in r if k.startswith(("safety/", "gate/"))})
    rows = same_decisions(one, two, safety)  # the scores (process 0's, handed to both), alarms, promotions
    assert rows[0]["safety/own"] == 1.0 and any(r["safety/alarm"] for r in rows)  # lr 0.05 broke some probe
    start = load_file(tiny_model_dir / "model.safetensors")
    for r in rows[1:]:
        if r.get("gate/rolled_back_to") is not None:  # its checkpoint holds the promoted weights, on 2 processes
            got = policy_weights(two / f"step_{r['step']:06d}")
            want = policy_weights(two / f"step_{r['gate/rolled_back_to']:06d}")
            assert all((got[k] == want[k]).all() for k in want)
    assert all((policy_weights(two / "step_000000")[k] == start[k]).all() for k in start)
