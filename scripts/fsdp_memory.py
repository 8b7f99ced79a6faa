"""Per-process memory of the sharded training states (selfrl/fsdp.py) at 1 and 2 CPU processes (gloo), for
docs/scale.md: a random 8-layer Qwen2 (hidden 256), policy + fp32 momentum + reference, one AdamW step.

    OMP_NUM_THREADS=1 python scripts/fsdp_memory.py

Prints, per process: parameters held (local shards), bytes of policy + momentum + reference + AdamW moments held,
and peak resident memory (ru_maxrss, which includes the interpreter, torch and transformers, ~0.5 GB here).
"""
from __future__ import annotations

import copy
import json
import resource
import socket
import sys

import torch


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=32000, hidden_size=256, intermediate_size=1024,
                                        num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4,
                                        tie_word_embeddings=True))


def states(rank: int, world: int, port: int) -> None:
    from selfrl import fsdp

    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
    policy = model()
    momentum, ref = copy.deepcopy(policy).requires_grad_(False), copy.deepcopy(policy).requires_grad_(False)
    if world > 1:
        fsdp.shard(policy)
        fsdp.shard(momentum, trainable=False)
        fsdp.shard(ref, trainable=False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    ids = torch.randint(0, 32000, (2, 32), generator=torch.Generator().manual_seed(rank))
    policy(input_ids=ids, labels=ids).loss.backward()
    opt.step()

    def nbytes(ts):
        return sum(t.numel() * t.element_size() for t in fsdp.local_shards(ts))

    held = nbytes(policy.parameters()) + nbytes(momentum.parameters()) + nbytes(ref.parameters())
    held += sum(nbytes([v for v in s.values() if torch.is_tensor(v) and v.dim()]) for s in opt.state.values())
    print(json.dumps({"world": world, "rank": rank, "params_held": sum(t.numel() for t in fsdp.local_shards(
        policy.parameters())), "states_MiB": round(held / 2**20, 1),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}), flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    if world == 1:
        states(0, 1, 0)
    else:
        torch.multiprocessing.spawn(states, args=(world, _port()), nprocs=world)
