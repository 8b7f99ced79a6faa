"""Tier (b): the real CLI in a subprocess on a tiny model; every method trains and changes parameters."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfrl.grpo_config import load_config
from selfrl.grpo import train
from tests.conftest import policy_weights, tiny_sets

REQUIRED_KEYS = [
    "reward/pseudo", "reward/true", "reward/label_accuracy", "vote/majority_share", "vote/unanimous_groups",
    "policy/entropy", "filter/dropped", "anchor/kl", "loss/pg", "loss/kl", "grad/norm", "time/step_s",
]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfrl", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def params_changed(model_dir: Path, ckpt: Path) -> float:
    before = load_file(model_dir / "model.safetensors")
    after = policy_weights(ckpt)
    return max((after[k] - before[k]).abs().max().item() for k in before)


def test_cli_train_mgrpo_iqr_two_steps(tiny_model_dir, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("method: mgrpo\niqr_filter: true\nreport_to: tensorboard\n")
    out = tmp_path / "run"
    sets = [a for s in tiny_sets(tiny_model_dir, out, num_generations=8) if not s.startswith("report_to")
            for a in ("--set", s)]
    proc = run_cli("train", str(cfg), *sets)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "val/accuracy" in rows[0]
    for key in REQUIRED_KEYS + ["val/accuracy"]:
        assert key in rows[1] and key in rows[2], key
    # k3 KL of the policy from its momentum anchor: at step 1 both are the start model (0 up to the rounding of two
    # ways of computing the same log-probs); at step 2 the policy has taken one update and the EMA lags it
    assert rows[1]["anchor/kl"] == pytest.approx(0.0, abs=1e-7)
    assert rows[2]["anchor/kl"] > 1e-3  # 2.1 measured; a policy that did not move gives ~1e-9
    assert params_changed(tiny_model_dir, out / "step_000002") > 0
    for name in ("momentum.safetensors", "optimizer.pt", "rng.pt", "meta.json", "policy/config.json"):
        assert (out / "step_000002" / name).exists(), name
    assert json.loads((out / "step_000002" / "meta.json").read_text())["cursor"] == 8  # 2 steps x 4 prompts
    assert load_config(out / "config.yaml").iqr_filter is True  # the resolved config is saved
    assert list((out / "tb").glob("events.*")), "TensorBoard events written"


@pytest.mark.parametrize("method", ["oracle", "srt", "ttrl", "mgrpo"])
def test_every_method_updates_parameters(tiny_model_dir, tmp_path, method):
    # LastDigit: a task-defined equivalence loose enough that the tiny model's answers sometimes match the gold one,
    # so oracle's rewards vary within a group (with exact answers they are all 0: no gradient, honestly).
    out = tmp_path / method
    task = f"{Path(__file__).with_name('gold_tasks.py')}:LastDigit"
    train(load_config(None, tiny_sets(tiny_model_dir, out, method=method, task=task, prompts_per_step=8)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("grad/norm", 0) > 0 for r in rows)
    assert params_changed(tiny_model_dir, out / "step_000002") > 0


def test_momentum_is_ema_of_policy(tiny_model_dir, tmp_path):
    """After one step, θk = m·θ0 + (1 − m)·θ1 exactly (decay applied after the optimizer step, in fp32)."""
    out = tmp_path / "ema"
    train(load_config(None, tiny_sets(tiny_model_dir, out, method="mgrpo", max_steps=1, ema_decay=0.9)))
    theta0 = load_file(tiny_model_dir / "model.safetensors")
    theta1 = policy_weights(out / "step_000001")
    mom = load_file(out / "step_000001" / "momentum.safetensors")
    for k, v in mom.items():
        torch.testing.assert_close(v, 0.9 * theta0[k] + 0.1 * theta1[k], rtol=1e-5, atol=1e-6)


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methd: srt\n")
    proc = run_cli("train", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown config key 'methd'" in proc.stderr
    proc = run_cli("train", str(bad.with_name("missing.yaml")))
    assert proc.returncode == 2 and "config file not found" in proc.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tmp_path / 'no_such_model'}\noutput_dir: {tmp_path / 'r'}\nprogress: false\n")
    proc = run_cli("train", str(cfg))
    assert proc.returncode == 2 and "model path not found" in proc.stderr.strip().splitlines()[-1]


def test_existing_run_is_not_overwritten(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    sets = tiny_sets(tiny_model_dir, out, method="srt", max_steps=1)
    train(load_config(None, sets))
    before = (out / "metrics.jsonl").read_text()
    proc = run_cli("train", *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (out / "metrics.jsonl").read_text() == before


def test_cli_eval_and_report(tiny_model_dir, tmp_path):
    out = tmp_path / "srt"
    train(load_config(None, tiny_sets(tiny_model_dir, out, method="srt")))
    proc = run_cli("eval", str(out), "--split", "val", "--limit", "8", "--max-completion-length", "12")
    assert proc.returncode == 0, proc.stderr
    assert "val accuracy (greedy, n=8)" in proc.stdout
    proc = run_cli("report", str(out), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| srt | srt | none |" in md
    assert (tmp_path / "rep" / "report.png").stat().st_size > 10_000


def test_readme_example_task_trains(tiny_model_dir, tmp_path):
    """examples/my_task.py is the README's task file: it loads by path and trains with its own YAML."""
    root = Path(__file__).resolve().parents[1]
    assert (root / "examples" / "my_task.py").read_text().split("from selfrl.tasks import Task", 1)[1].strip() in (
        root / "README.md"
    ).read_text()  # the README shows the file as it is
    out = tmp_path / "my_task"
    cfg = load_config(root / "examples" / "my_task.yaml",
                      [s for s in tiny_sets(tiny_model_dir, out) if not s.startswith("task=")]
                      + [f"task={root / 'examples' / 'my_task.py'}:SmallSums"])
    assert cfg.method == "mgrpo" and cfg.iqr_filter
    train(cfg)
    assert params_changed(tiny_model_dir, out / "step_000002") > 0


def test_bad_task_specs_are_one_line_errors(tmp_path):
    from selfrl.errors import TaskError
    from selfrl.tasks import load_task

    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('no module named foo')\n")
    partial = tmp_path / "partial.py"
    partial.write_text("class P:\n    def extract_answer(self, c):\n        return None\n")
    cases = [
        ("nope", "expected a built-in name"),
        (f"{tmp_path / 'missing.py'}:X", "task file not found"),
        (f"{broken}:X", "failed to import: ImportError"),
        (f"{partial}:Q", "defines no 'Q'"),
        (f"{partial}:P", "lacks method(s): format_prompt, is_equivalent, train_prompts, eval_examples"),
        ("no_such_package.mod:X", "failed to import"),
    ]
    for spec, msg in cases:
        with pytest.raises(TaskError, match=re.escape(msg)) as e:
            load_task(spec)
        assert "\n" not in str(e.value)


def test_demo_runs_four_methods_and_keeps_finished_runs(tiny_model_dir, tmp_path, capsys):
    from selfrl.lab.demo import run_demo

    sets = [f"model={tiny_model_dir}", "max_steps=2", "eval_every=1", "eval_limit=8", "prompts_per_step=4",
            "save_every=1", "report_to=none"]
    md = run_demo(str(tmp_path / "demo"), sets, progress=False)
    for row in ("| oracle | oracle | gold answers (reward) |", "| srt | srt | none |", "| mgrpo | mgrpo | none |",
                "| mgrpo_iqr | mgrpo+iqr | none |"):
        assert row in md
    assert (tmp_path / "demo" / "report.png").is_file()
    run_demo(str(tmp_path / "demo"), sets, progress=False)  # a second call keeps what is finished
    assert capsys.readouterr().out.count("already finished, kept") == 4
