"""Nothing of an earlier run is lost (issue 21): every data-loss case leaves the run directory byte-identical."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from selfrl.errors import SelfRLError
from selfrl.grpo import train
from selfrl.grpo_config import load_config
from selfrl.rundir import lock_run_dir, resume_config
from tests.conftest import tiny_sets
from tests.test_cli import run_cli


def tree(d: Path) -> dict[str, str]:
    """Every file under d (the lock file aside) -> sha256 of its bytes."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def srt_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "srt"
    train(load_config(None, tiny_sets(tiny_model_dir, out, method="srt", max_steps=1)))
    return out


@pytest.mark.parametrize("bad_set, says", [
    ("method=mgrpo", "method cannot change on resume"),
    ("model=/no/such/model", "model cannot change on resume"),
])
def test_a_resume_that_cannot_work_leaves_the_run_untouched(srt_run, bad_set, says):
    before = tree(srt_run)
    proc = run_cli("train", "--resume", str(srt_run), "--set", bad_set)
    assert proc.returncode == 2 and says in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert tree(srt_run) == before  # config.yaml included: a plain --resume still works afterwards
    assert resume_config(srt_run, []).method == "srt"


def test_a_safe_resume_change_is_accepted(srt_run):
    assert resume_config(srt_run, ["max_steps=5", "eval_every=2"]).max_steps == 5


def test_a_truncated_config_is_not_resumed_on_defaults(srt_run, tmp_path):
    import shutil

    run = tmp_path / "cut"
    shutil.copytree(srt_run, run)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text[: len(text) // 2].rsplit("\n", 1)[0] + "\n")
    with pytest.raises(SelfRLError, match="config.yaml lacks .* refusing to resume on defaults"):
        resume_config(run, [])


def test_train_into_a_directory_with_checkpoints_but_no_metrics_refuses(srt_run, tiny_model_dir, tmp_path):
    import shutil

    run = tmp_path / "ckpt_only"
    shutil.copytree(srt_run, run)
    (run / "metrics.jsonl").unlink()
    before = tree(run)
    proc = run_cli("train", *[a for s in tiny_sets(tiny_model_dir, run, method="srt") for a in ("--set", s)])
    assert proc.returncode == 2 and "already holds a run" in proc.stderr, proc.stderr
    assert tree(run) == before


def test_a_second_train_on_a_locked_directory_stops_at_once(tiny_model_dir, tmp_path):
    run = tmp_path / "busy"
    run.mkdir()
    lock = lock_run_dir(run)  # as a first `train` holds it for its lifetime
    try:
        before = tree(run)
        proc = run_cli("train", *[a for s in tiny_sets(tiny_model_dir, run, method="srt") for a in ("--set", s)])
        assert proc.returncode == 2 and "is in use by selfrl process" in proc.stderr, proc.stderr
        assert tree(run) == before and not (run / "metrics.jsonl").exists()
    finally:
        lock.close()
    train(load_config(None, tiny_sets(tiny_model_dir, run, method="srt", max_steps=1)))  # free again once released


def test_a_run_stopped_before_its_first_checkpoint_is_no_dead_end(srt_run, tiny_model_dir, tmp_path):
    import shutil

    run = tmp_path / "early"
    run.mkdir()
    shutil.copy(srt_run / "metrics.jsonl", run)
    shutil.copy(srt_run / "config.yaml", run)
    fresh = run_cli("train", *[a for s in tiny_sets(tiny_model_dir, run, method="srt") for a in ("--set", s)])
    resumed = run_cli("train", "--resume", str(run))
    for proc in (fresh, resumed):  # both say the way out (delete it), neither sends the user to the other
        assert proc.returncode == 2 and f"delete {run}" in proc.stderr, proc.stderr


def test_count_flags_refuse_zero_and_negatives(srt_run):
    # a negative --limit was used as a slice from the end (issue 21: figures over nothing)
    proc = run_cli("eval", str(srt_run), "--split", "val", "--limit", "-3")
    assert proc.returncode == 2 and "argument --limit: must be >= 1, got -3" in proc.stderr, proc.stderr


def test_a_row_that_raises_anything_is_recorded_as_failed(tmp_path, monkeypatch):
    """A bug or a task error of any type in one run is that run's failure, never the study's traceback (issue 21)."""
    import json

    import selfrl.grpo
    from selfrl.grpo_config import load_config as cfg_of
    from selfrl.lab.study import Run, run_one

    def broken(cfg, resume=False):
        raise ZeroDivisionError("division by zero in a user reward")

    monkeypatch.setattr(selfrl.grpo, "train", broken)
    run = Run("row", 0, cfg_of(None, [f"output_dir={tmp_path / 'row' / 'seed_0'}"]))
    assert run_one(run) == "failed"
    assert json.loads((run.run_dir / "failed.json").read_text())["error"] == \
        "ZeroDivisionError: division by zero in a user reward"


def test_a_report_out_that_is_a_file_is_one_line(srt_run, tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    proc = run_cli("report", str(srt_run), "--out", str(tmp_path / "taken"))
    assert proc.returncode == 2 and "cannot write the report to" in proc.stderr and "Traceback" not in proc.stderr
