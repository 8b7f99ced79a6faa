"""FSDP2 pieces (selfrl/fsdp.py) on 2 CPU processes (gloo) against 1 plain process: two AdamW steps of a shared
token-mean loss, the EMA on each process's own shards, forward passes inside `gathered` in numbers that differ per
process, and a torch.distributed.checkpoint written by 2 processes read back whole by 1.

Tolerances as tests/test_distributed.py derives them: the 2-process gradient is the sum of two halves of the
1-process one (a few ulps apart), so the gradient norm agrees to 1e-5 relative and the weights after 2 AdamW steps at
lr 1e-2 within WEIGHT_TOL = lr/10.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from selfrl import core, fsdp
from tests.test_distributed import WEIGHT_TOL, _free_port

DECAY, LR, STEPS = 0.9, 1e-2, 2


def tiny_model() -> torch.nn.Module:
    """A 2-layer Qwen2 with random weights, the same on every process (seeded)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


def batch() -> torch.Tensor:
    return torch.randint(0, 48, (4, 10), generator=torch.Generator().manual_seed(1))  # 4 sequences of 10 tokens


def loss_share(model, ids: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Next-token NLL summed over `ids` and divided by the whole batch's count: a process's share of the mean."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 48), ids[:, 1:].reshape(-1), reduction="sum") / n_tokens


def train(model, momentum, ids, n_tokens, check_ema=None) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    norms = []
    for _ in range(STEPS):
        loss_share(model, ids, n_tokens).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)))
        opt.step()
        opt.zero_grad()
        before = [t.clone() for t in fsdp.local_shards(momentum.parameters())]
        policy = [t.detach().float() for t in fsdp.local_shards(model.parameters())]
        core.ema_update_(fsdp.local_shards(momentum.parameters()), policy, DECAY)
        if check_ema is not None:
            check_ema(before, policy, fsdp.local_shards(momentum.parameters()))
    return norms, opt


def _worker(rank: int, port: int, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = tiny_model()
    momentum = copy.deepcopy(model).requires_grad_(False)
    full_numel = sum(p.numel() for p in model.parameters())
    fsdp.shard(model)
    fsdp.shard(momentum, trainable=False)
    ema_err, shard_numel = [], sum(t.numel() for t in fsdp.local_shards(model.parameters()))

    def check_ema(before, policy, after):  # θk ← m·θk + (1 − m)·θq on this process's slices, in float64
        ema_err.append(max(((DECAY * b.double() + (1 - DECAY) * p.double()) - a.double()).abs().max().item()
                           for b, p, a in zip(before, policy, after)))

    ids = batch()
    norms, opt = train(model, momentum, ids[2 * rank : 2 * rank + 2], ids[:, 1:].numel(), check_ema)
    # Forward passes inside `gathered`: process 0 runs 1, process 1 runs 3; sharded, the second would wait forever.
    with torch.no_grad(), fsdp.gathered(model) as m:
        logits = [m(input_ids=ids[:1]).logits for _ in range(1 + 2 * rank)][-1]
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = {name: get_model_state_dict(x, options=opts) for name, x in (("policy", model), ("momentum", momentum))}
    fsdp.save(Path(out) / "ckpt", {"policy": model, "momentum": momentum}, opt)
    if rank == 0:
        torch.save({"full": full, "logits": logits}, Path(out) / "full.pt")
    (Path(out) / f"{rank}.json").write_text(json.dumps({"norms": norms, "ema_err": ema_err, "shard": shard_numel,
                                                        "whole": full_numel}))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(out)), nprocs=2)
    return out


def test_two_sharded_processes_match_one(sharded):
    model = tiny_model()
    momentum = copy.deepcopy(model).requires_grad_(False)
    ids = batch()
    norms, _ = train(model, momentum, ids, ids[:, 1:].numel())
    got = torch.load(sharded / "full.pt", weights_only=False)
    for rank in (0, 1):
        r = json.loads((sharded / f"{rank}.json").read_text())
        assert r["norms"] == pytest.approx(norms, rel=1e-5)  # gradients summed over processes, not averaged
        assert r["shard"] < r["whole"]  # each process holds a slice
        assert max(r["ema_err"]) < 1e-6  # the momentum shards are the EMA of the policy shards, step by step
    for name, ref in (("policy", model), ("momentum", momentum)):
        want = ref.state_dict()
        diff = max((got["full"][name][k] - want[k]).abs().max().item() for k in got["full"][name])
        assert diff <= WEIGHT_TOL, (name, diff)
    with torch.no_grad():
        assert torch.allclose(got["logits"], model(input_ids=ids[:1]).logits, atol=1e-3)  # gathered = whole weights


def test_checkpoint_of_two_processes_loads_whole_in_one(sharded):
    got = torch.load(sharded / "full.pt", weights_only=False)["full"]
    whole = fsdp.full_state_dict(sharded / "ckpt", "policy")  # what `selfrl export` would write
    assert whole.keys() == got["policy"].keys() and all((whole[k] == got["policy"][k]).all() for k in whole)
    model = tiny_model()
    momentum = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    fsdp.load(sharded / "ckpt", {"policy": model, "momentum": momentum}, opt)  # 2 processes' shards -> 1 process
    for name, m in (("policy", model), ("momentum", momentum)):
        sd = m.state_dict()
        assert all((sd[k] == got[name][k]).all() for k in got[name]), name
    assert all(s["step"].item() == STEPS for s in opt.state.values())  # AdamW's moments and step came back too


# --- the training loop with fsdp: true (the real CLI under accelerate launch) ---------------------------------------

def _loop_weights(run: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    """Policy and momentum tensors of a run's step checkpoint, whole, whatever its format."""
    from safetensors.torch import load_file

    from tests.conftest import policy_weights

    ckpt = run / f"step_{step:06d}"
    if (ckpt / "shards").is_dir():
        return {name: fsdp.full_state_dict(ckpt / "shards", name) for name in ("policy", "momentum")}
    return {"policy": policy_weights(ckpt), "momentum": load_file(ckpt / "momentum.safetensors")}


def _max_diff(a: dict, b: dict) -> float:
    shared = [k for k in a if k in b]
    assert shared and all(k.endswith("lm_head.weight") for k in set(a) ^ set(b))  # a tied head may be stored once
    return max((a[k].float() - b[k].float()).abs().max().item() for k in shared)


@pytest.fixture(scope="module")
def loop_runs(tiny_model_dir, tmp_path_factory):
    """(plain 1-process run, fsdp 2-process run): the same global batch and seed (tests/test_distributed.py's RUN)."""
    from selfrl.grpo import train
    from selfrl.grpo_config import load_config
    from tests.conftest import tiny_sets
    from tests.test_distributed import RUN, as_args, launch

    tmp = tmp_path_factory.mktemp("fsdp_loop")
    one, two = tmp / "one", tmp / "two"
    train(load_config(None, tiny_sets(tiny_model_dir, one, seed_per_prompt="true", **RUN)))
    proc = launch(2, "train", *as_args(tiny_sets(tiny_model_dir, two, fsdp="true", **RUN)), tmp=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return one, two


def test_fsdp_training_matches_one_plain_process(loop_runs):
    from selfrl.logger import read_metrics
    from tests.test_distributed import CLOSE, COUNT_TOL, COUNTS, METRIC_TOL

    one, two = loop_runs
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for key in COUNTS:  # the same rollouts, votes and greedy answers
        assert max(abs(x[key] - y[key]) for x, y in zip(a, b) if x.get(key) is not None) <= COUNT_TOL, key
    for key in CLOSE:
        assert max(abs(x[key] - y[key]) for x, y in zip(a, b) if x.get(key) is not None) <= METRIC_TOL, key
    assert max(r["grad/norm"] for r in b[1:]) > 0
    ckpt = two / "step_000003"
    assert not (ckpt / "momentum.safetensors").exists()
    assert len(list((ckpt / "shards").glob("*.distcp"))) == 2  # each process wrote its own shards
    for step in (1, 3):
        x, y = _loop_weights(one, step), _loop_weights(two, step)
        for name in ("policy", "momentum"):  # the EMA ran on each process's slices and still equals the whole one
            assert _max_diff(x[name], y[name]) <= WEIGHT_TOL, (step, name)


def test_fsdp_run_resumes_on_one_process_and_exports(loop_runs, tmp_path):
    import shutil

    from selfrl.cli import main
    from selfrl.grpo import train
    from selfrl.logger import read_metrics
    from selfrl.models import load_model
    from selfrl.rundir import resume_config

    _, two = loop_runs
    cut = tmp_path / "cut"
    shutil.copytree(two, cut)
    shutil.rmtree(cut / "step_000003")  # a crash after step 3's log line: resumed from step 2's shards, on 1 process
    train(resume_config(cut, []), resume=True)
    a = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(two)]
    b = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(cut)]
    assert [r["step"] for r in b] == [0, 1, 2, 3] and a[:3] == b[:3]
    assert b[3]["vote/majority_share"] == pytest.approx(a[3]["vote/majority_share"], abs=1e-6)  # the same rollouts
    x, y = _loop_weights(two, 3), _loop_weights(cut, 3)
    for name in ("policy", "momentum"):  # the optimizer state and the momentum came back from 2 processes' shards
        assert _max_diff(x[name], y[name]) <= WEIGHT_TOL, name
    out = tmp_path / "exported"
    assert main(["export", str(two), "--out", str(out)]) == 0
    model, _ = load_model(str(out), torch.device("cpu"))  # one plain HF directory
    assert _max_diff({k: v for k, v in model.state_dict().items()}, x["policy"]) == 0.0


def test_fsdp_config_errors():
    from selfrl.errors import ConfigError
    from selfrl.grpo_config import load_config

    with pytest.raises(ConfigError, match="fsdp: LoRA"):
        load_config(None, ["fsdp=true", "use_peft=true"])
    with pytest.raises(ConfigError, match="gradient_checkpointing: only with fsdp"):
        load_config(None, ["gradient_checkpointing=true"])
    load_config(None, ["fsdp=true", "gradient_checkpointing=true", "use_vllm=false"]).validate_processes(2)


def test_fsdp_bf16_and_gradient_checkpointing_train(tiny_model_dir, tmp_path):
    """Mixed precision (bf16 compute, fp32 master weights and reduction) and recomputed activations, on 2 processes:
    each step updates the policy (a finite, positive gradient norm) and the EMA follows it (anchor/kl > 0)."""
    from selfrl.logger import read_metrics
    from tests.conftest import tiny_sets
    from tests.test_distributed import RUN, as_args, launch

    run = tmp_path / "bf16"
    sets = tiny_sets(tiny_model_dir, run, fsdp="true", dtype="bfloat16", gradient_checkpointing="true",
                     **{**RUN, "max_steps": 2})
    proc = launch(2, "train", *as_args(sets), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run)[1:]
    assert all(0 < r["grad/norm"] < float("inf") and r["anchor/kl"] > 0 for r in rows), rows
    whole = fsdp.full_state_dict(run / "step_000002" / "shards", "policy")
    assert all(t.dtype == torch.float32 for t in whole.values())  # the master weights stay fp32
