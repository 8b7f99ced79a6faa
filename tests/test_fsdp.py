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
