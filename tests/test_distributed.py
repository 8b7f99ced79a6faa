"""Multi-process data parallel (selfrl/distributed.py): the real CLI under `accelerate launch` with 2 CPU processes
(gloo) against a 1-process run with the same global batch and seed, a 2-process resume, and the collectives.

The tolerance. Both runs sample every prompt from its own seed (seed_per_prompt), so the rollouts, votes, rewards
and advantages are the same; what differs is the order of float sums (each process's half of the batch, then the
all-reduce), which moves a float32 loss or gradient by a few ulps. So metrics of discrete things (lengths, votes,
dropped trajectories, greedy accuracy) must match to float rounding of their means (COUNT_TOL; one sample of 16
changing moves them by 0.06), continuous ones within METRIC_TOL (measured over 4 seeds: at most 1e-5, grad/norm),
and after 3 AdamW steps at lr 1e-2 the weights within WEIGHT_TOL = lr/10 (measured: at most 2e-4). Adam divides by
the root of the squared gradient, so a weight whose gradient is near 0 moves by a sizeable part of lr on a few-ulp
change; a real divergence (a lost all-reduce, a wrong denominator) moves the weights by ~lr per step.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfrl.grpo_config import load_config
from selfrl.errors import ConfigError, SelfRLError
from selfrl.logger import read_metrics
from selfrl.grpo import train
from tests.conftest import policy_weights, same_tensors, tiny_sets

ROOT = Path(__file__).resolve().parents[1]
COUNT_TOL = 1e-6
METRIC_TOL = 1e-4
WEIGHT_TOL = 1e-3
COUNTS = ["filter/dropped", "filter/dropped_frac", "filter/trained_dropped_frac", "policy/response_length",
          "vote/majority_share", "vote/unanimous_groups", "vote/answer_diversity", "reward/true",
          "reward/label_accuracy", "val/accuracy", "train/skipped", "lr"]
CLOSE = ["loss/pg", "loss/kl", "loss/clip_frac", "reward/pseudo", "grad/norm", "policy/entropy",
         "policy/self_certainty", "anchor/kl"]
RUN = dict(method="mgrpo", iqr_filter="true", max_steps=3, torch_threads=1, beta=0.01)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes n -m selfrl ...`: on a machine without a GPU the processes
    train on CPU and reduce with gloo. A free port, so parallel test runs do not meet on 29500; an empty HF_HOME, so
    no accelerate default config of this machine (DeepSpeed, say) changes the launch."""
    env = {**os.environ, "HF_HOME": str(tmp / "hf_home"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "selfrl", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def as_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """(1-process run dir, 2-process run dir, the 2-process launch), same global batch (4 prompts) and seed."""
    tmp = tmp_path_factory.mktemp("dp")
    one, two = tmp / "one", tmp / "two"
    train(load_config(None, tiny_sets(tiny_model_dir, one, seed_per_prompt="true", **RUN)))
    proc = launch(2, "train", *as_args(tiny_sets(tiny_model_dir, two, **RUN)), tmp=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return one, two, proc


def test_two_processes_match_one(runs):
    one, two, proc = runs
    assert load_config(two / "config.yaml").seed_per_prompt  # turned on by the launch, and recorded
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in b] == [0, 1, 2, 3]  # one writer: no step logged twice
    diffs = {}
    for key in COUNTS + CLOSE:
        pairs = [(x[key], y[key]) for x, y in zip(a, b) if key in x]
        assert pairs and all((u is None) == (v is None) for u, v in pairs), key
        diffs[key] = max(abs(u - v) for u, v in pairs if u is not None)
    last = "step_000003"
    for name, (x, y) in {"policy": (policy_weights(one / last), policy_weights(two / last)),
                         "momentum": (load_file(one / last / "momentum.safetensors"),
                                      load_file(two / last / "momentum.safetensors"))}.items():
        assert x.keys() == y.keys()
        diffs[f"weights/{name}"] = max((x[k] - y[k]).abs().max().item() for k in x)
    print("\n1 vs 2 processes, max |diff| over steps 0-3:\n" + "\n".join(f"  {k}: {v:.3g}" for k, v in diffs.items()))
    for key in COUNTS:
        assert diffs[key] <= COUNT_TOL, (key, diffs[key])  # the same rollouts, votes and greedy answers
    for key in CLOSE:
        assert diffs[key] <= METRIC_TOL, (key, diffs[key])
    assert diffs["weights/policy"] <= WEIGHT_TOL and diffs["weights/momentum"] <= WEIGHT_TOL, diffs
    assert max(r["grad/norm"] for r in b[1:]) > 0  # the comparison covers steps that trained


def test_one_writer_and_identical_replicas(runs):
    from selfrl.distributed import checksum

    _, two, proc = runs
    assert proc.stdout.count("run directory:") == 1  # process 0 prints, the other is silent
    assert sorted(p.name for p in two.iterdir() if p.name.startswith("step_")) == [
        "step_000001", "step_000002", "step_000003"]
    # Every checkpoint: each process's checksum of its momentum (EMA) weights, gathered by process 0, are equal, and
    # equal to the checksum of the momentum file process 0 wrote.
    found = re.findall(r"step (\d+): momentum checksum per process \[([^\]]+)\]", proc.stderr)
    assert [int(s) for s, _ in found] == [1, 2, 3], proc.stderr[-2000:]
    for step, values in found:
        per_process = [float(v) for v in values.split(",")]
        assert len(per_process) == 2 and per_process[0] == per_process[1]
        saved = load_file(two / f"step_{int(step):06d}" / "momentum.safetensors")
        assert per_process[0] == pytest.approx(checksum(saved.values()), rel=1e-12, abs=1e-9)


def test_two_process_resume_replays_exactly(runs, tiny_model_dir, tmp_path):
    _, two, _ = runs
    cut = tmp_path / "cut"
    shutil.copytree(two, cut)
    shutil.rmtree(cut / "step_000003")  # a crash after step 3's log line, before its checkpoint
    proc = launch(2, "train", "--resume", str(cut), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def rows(run):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(run)]

    assert rows(cut) == rows(two)
    assert same_tensors(policy_weights(two / "step_000003"), policy_weights(cut / "step_000003"))
    assert same_tensors(load_file(two / "step_000003" / "momentum.safetensors"),
                        load_file(cut / "step_000003" / "momentum.safetensors"))


def test_config_that_processes_cannot_share_is_one_line_error():
    load_config(None, ["prompts_per_step=3", "online_filter=0.6"]).validate_processes(1)  # one process runs anything
    load_config(None, ["prompts_per_step=4"]).validate_processes(2)
    for sets in (["online_filter=0.6"], ["collapse_detector=rollback"], ["probes=p.jsonl"], ["offline_labels=true"],
                 ["curriculum_fraction=0.5"], ["early_stopping_patience=2"], ["use_vllm=true"]):
        load_config(None, sets + ["prompts_per_step=4"]).validate_processes(2)  # decided from every process's votes
    for sets, field in [(["prompts_per_step=3"], "prompts_per_step")]:  # vLLM: an engine per process (issue 20)
        with pytest.raises(ConfigError, match=f"^{field}: ") as e:
            load_config(None, sets).validate_processes(2)
        assert "\n" not in str(e.value)


def test_launches_that_would_not_share_the_work_are_one_line_errors(monkeypatch):
    from selfrl.distributed import init

    # accelerate's --cpu launcher with --num_processes 2 but no MPI hostfile starts one process (it sets
    # MASTER_ADDR, no WORLD_SIZE): training alone while the user expects 2 would be a silent surprise.
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(SelfRLError, match="started 1 process, not --num_processes"):
        init("auto")
    monkeypatch.delenv("MASTER_ADDR")
    assert init("cpu") == torch.device("cpu")  # `accelerate launch --cpu` with one process is a plain run
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # parameter sharding: refused, not run half-right
    with pytest.raises(SelfRLError, match="^accelerate launched with DeepSpeed: selfrl shards with its own `fsdp: true`"):
        init("auto")


def _collectives(rank: int, port: int, out: str) -> None:
    """One of 2 gloo processes: the metric reduction, the union, and a replica check that must fail."""
    from selfrl import distributed as dist

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # Process 0: reward 1.0 over 1 item, process 1: 0.0 over 3 items -> 1/4; counts add up; the rest is untouched.
    metrics = {"reward/pseudo": [1.0, 0.0][rank], "filter/dropped": [2, 5][rank], "lr": 0.5, "anchor/kl": None}
    got = dist.global_metrics(metrics, {"reward/pseudo": [1, 3][rank], "anchor/kl": 1}, sums=["filter/dropped"])
    labels = dist.union([{"7", "8"}, {"8", "9"}][rank])
    weights = [torch.ones(3), torch.zeros(2)]
    dist.check_replicas(1, {"policy": weights})  # identical: passes
    if rank == 1:
        weights[0][1] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))  # one ulp
    try:
        dist.check_replicas(2, {"policy": weights})
        diverged = ""
    except SelfRLError as e:
        diverged = str(e)
    Path(out, f"{rank}.json").write_text(json.dumps({"metrics": got, "labels": sorted(labels), "diverged": diverged}))
    torch.distributed.destroy_process_group()


def test_collectives_on_two_processes(tmp_path):
    torch.multiprocessing.spawn(_collectives, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got["metrics"] == {"reward/pseudo": 0.25, "filter/dropped": 7, "lr": 0.5, "anchor/kl": None}
        assert got["labels"] == ["7", "8", "9"]
        assert "process 1's policy weights differ from process 0's" in got["diverged"]  # raised on both processes


def test_lora_two_processes_match_one(tiny_model_dir, tmp_path):
    """LoRA with the adapter-only anchor: the gradient sum covers the policy adapter (the only trainable tensors),
    and the momentum adapter stays identical on both processes (checked at each checkpoint by check_replicas)."""
    one, two = tmp_path / "one", tmp_path / "two"
    sets = dict(RUN, max_steps=2, use_peft="true", lora_target_modules="all-linear")
    train(load_config(None, tiny_sets(tiny_model_dir, one, seed_per_prompt="true", **sets)))
    proc = launch(2, "train", *as_args(tiny_sets(tiny_model_dir, two, **sets)), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_metrics(one), read_metrics(two)
    for key in CLOSE:
        assert max(abs(x[key] - y[key]) for x, y in zip(a[1:], b[1:])) <= METRIC_TOL, key
    for f in ("policy/adapter_model.safetensors", "momentum.safetensors"):
        x, y = load_file(one / "step_000002" / f), load_file(two / "step_000002" / f)
        assert x.keys() == y.keys() and max((x[k] - y[k]).abs().max().item() for k in x) <= WEIGHT_TOL, f
    assert max(v.abs().max().item() for k, v in load_file(two / "step_000002" / "policy/adapter_model.safetensors")
               .items() if "lora_B" in k) > 0  # the adapter trained
