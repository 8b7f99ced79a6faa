"""Issue 6: SIGKILL a CPU run at many moments (mid-rollout, mid-update, mid-evaluation, mid-checkpoint-write, after
the rename, mid-retention, mid-log line), resume it, and check it is the same run as the uninterrupted one: identical
metrics from the checkpoint on, identical final policy and momentum weights. Plus checksums, fallback and retention."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from selfrl.checkpoint import latest_checkpoint, list_checkpoints, read_pointers, verify_checkpoint
from selfrl.grpo_config import load_config
from selfrl.errors import SelfRLError
from selfrl.grpo import train
from tests.conftest import policy_weights, same_tensors, tiny_sets
from tests.test_determinism import metrics

ROOT = Path(__file__).resolve().parents[1]
RUN = dict(method="mgrpo", iqr_filter="true", max_steps=10, save_every=2, save_total_limit=2,
           lr_scheduler_type="cosine", warmup_ratio=0.2)


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("baseline") / "run"
    train(load_config(None, tiny_sets(tiny_model_dir, run, **RUN)))
    return run


def same_run(a: Path, b: Path) -> None:
    assert metrics(a) == metrics(b)
    last = f"step_{RUN['max_steps']:06d}"
    assert same_tensors(policy_weights(a / last), policy_weights(b / last))
    assert same_tensors(load_file(a / last / "momentum.safetensors"), load_file(b / last / "momentum.safetensors"))


def last_step(run: Path) -> int:
    return int(latest_checkpoint(run).name[5:])


def torn_last_line(run: Path) -> bool:
    last = (run / "metrics.jsonl").read_text().splitlines()[-1]
    try:
        json.loads(last)
    except ValueError:
        return True
    return False


# (point, call number, evidence): the child dies in that function's N-th call; `evidence` checks the crash left
# the state the comment describes, so each case really tests what it says.
KILLS = [
    # step 5, policy rollouts: resume from step 4
    ("generate", 9, lambda run: last_step(run) == 4),
    # step 3, after the optimizer step, before the EMA update: resume from step 2
    ("ema", 3, lambda run: last_step(run) == 2),
    # step 5's greedy evaluation (call 1 is step 0): resume from step 4
    ("eval", 6, lambda run: last_step(run) == 4),
    # step 4's checkpoint write with its momentum file torn: a half-full step_000004.tmp, resume from step 2
    ("save_torn", 2, lambda run: (run / "step_000004.tmp").is_dir() and last_step(run) == 2),
    # step 2's checkpoint renamed into place, its pins (best, healthy) not yet all written
    ("pointer", 2, lambda run: last_step(run) == 2 and read_pointers(run).get("healthy") is None),
    # retention at step 8: an old checkpoint renamed to *.trash, its bytes not yet deleted
    ("prune", 1, lambda run: bool(list(run.glob("step_*.trash"))) and last_step(run) == 8),
    # step 7's metrics line half written: resume from step 6
    ("log", 8, lambda run: torn_last_line(run) and last_step(run) == 6),
]


@pytest.mark.parametrize("point,n,evidence", KILLS, ids=[k[0] for k in KILLS])
def test_sigkill_then_resume_is_the_same_run(tiny_model_dir, baseline, tmp_path, point, n, evidence):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    load_config(None, tiny_sets(tiny_model_dir, run, **RUN)).save(cfg)
    proc = subprocess.run([sys.executable, "-m", "tests.crash_child", str(cfg), point, str(n)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"child was not killed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    assert not (run / f"step_{RUN['max_steps']:06d}").exists(), "the kill came before the run finished"
    assert evidence(run), f"the kill at {point} #{n} did not leave the state this case is about"
    train(load_config(run / "config.yaml", [f"output_dir={run}"]), resume=True)
    same_run(baseline, run)
    assert not list(run.glob("*.tmp")) and not list(run.glob("*.trash")), "leftovers of the crash were cleared"


def test_every_checkpoint_carries_checksums_and_retention_keeps_pins(baseline):
    ckpts = list_checkpoints(baseline)
    pins = read_pointers(baseline)
    # save_total_limit=2 keeps steps 8 and 10, plus whatever is pinned (best by validation, last healthy)
    assert {p.name for p in ckpts} == {"step_000008", "step_000010"} | {f"step_{s:06d}" for s in pins.values()}
    assert pins["healthy"] == 10
    best_val = json.loads((baseline / f"step_{pins['best']:06d}" / "meta.json").read_text())["val/accuracy"]
    vals = [r["val/accuracy"] for r in metrics(baseline) if r["step"] % 2 == 0 and r["step"] > 0]
    assert best_val == max(vals)
    for ckpt in ckpts:
        meta = json.loads((ckpt / "meta.json").read_text())
        assert {"policy/model.safetensors", "momentum.safetensors", "optimizer.pt", "rng.pt"} <= meta["files"].keys()
        assert verify_checkpoint(ckpt) is None


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(baseline, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    opt = run / "step_000010" / "optimizer.pt"
    data = bytearray(opt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the size is right, the content is not
    opt.write_bytes(bytes(data))
    assert "optimizer.pt does not match its checksum" in verify_checkpoint(run / "step_000010")
    with caplog.at_level("WARNING", logger="selfrl"):
        assert latest_checkpoint(run).name == "step_000008"
    assert "step_000010 is corrupt" in caplog.text
    train(load_config(run / "config.yaml", [f"output_dir={run}"]), resume=True)  # replays steps 9 and 10
    same_run(baseline, run)


def test_no_intact_checkpoint_is_a_clear_error(baseline, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    for ckpt in list_checkpoints(run):
        (ckpt / "rng.pt").unlink()
    with pytest.raises(SelfRLError, match="no intact checkpoint"):
        train(load_config(run / "config.yaml", [f"output_dir={run}"]), resume=True)
    assert len(list_checkpoints(run)) >= 2, "resume never deletes what it cannot read"
