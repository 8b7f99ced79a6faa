"""vLLM rollouts (issue 5, item 4). On CPU an engine double stands in for vllm.LLM: it holds its own HF copy of the
model, takes weights only through `load_weights` as the real engine's model runner does, and samples with them. So
what it samples from is exactly what the trainer synced, and the tests can check that it is the CURRENT policy
before policy rollouts and the CURRENT EMA before momentum rollouts (a stale momentum engine turns M-GRPO into SRT).
The real engine runs in the GPU-only test at the end, skipped without CUDA and vllm."""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from selfrl import lora, vllm_backend
from selfrl.grpo_config import load_config
from selfrl.logger import read_metrics
from selfrl.models import load_model
from selfrl.rollout import encode_prompts, generate
from selfrl.grpo import train
from tests.conftest import policy_weights, tiny_sets


class EngineDouble:
    """vllm.LLM's surface the trainer uses: llm_engine...model_runner.model.load_weights, reset_prefix_cache, and
    generate(prompts as token ids, SamplingParams) -> [RequestOutput with .outputs[j].token_ids]."""

    def __init__(self, model_dir):
        self.model, self.tokenizer = load_model(str(model_dir), torch.device("cpu"))
        with torch.no_grad():
            for p in self.model.parameters():
                p.zero_()  # holds nothing until the trainer loads weights: an unsynced generation is garbage
        self.model.eval()
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=SimpleNamespace(model=SimpleNamespace(load_weights=self.load_weights)))))
        self.seen: list[dict[str, torch.Tensor]] = []  # the weights held at each generate call
        self.loads = 0

    def load_weights(self, weights):
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)
        self.loads += 1

    def reset_prefix_cache(self):
        pass

    def generate(self, prompts, sampling_params, use_tqdm=False):
        self.seen.append({k: v.detach().clone() for k, v in self.model.named_parameters()})
        # One SamplingParams for every prompt, or a list paired with the prompts in order (vllm.LLM.generate). As in
        # vLLM, a request with n samples is n child requests seeded seed + j, each sampling from its own generator.
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        outs = []
        for p, sp in zip(prompts, params):
            ids = torch.tensor([p["prompt_token_ids"]])
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            noise = torch.stack([torch.rand(sp.max_tokens, generator=torch.Generator().manual_seed(sp.seed + j))
                                 for j in range(sp.n)])  # (n, max_tokens)
            ro = generate(self.model, self.tokenizer, batch, sp.n, sp.max_tokens, sp.temperature, noise=noise)
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=r[m.bool()].tolist())
                                                 for r, m in zip(ro.response_ids, ro.response_mask)]))
        return outs


@pytest.fixture
def engine(tiny_model_dir, monkeypatch):
    double = EngineDouble(tiny_model_dir)
    monkeypatch.setattr(vllm_backend, "make_engine", lambda *a, **k: double)
    monkeypatch.setattr(vllm_backend, "sampling_params", lambda **kw: SimpleNamespace(**kw))
    return double


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in b)


def test_engine_holds_the_current_policy_and_the_current_ema_every_step(tiny_model_dir, tmp_path, engine):
    run = tmp_path / "run"
    train(load_config(None, tiny_sets(tiny_model_dir, run, method="mgrpo", use_vllm="true", max_steps=3,
                                      num_generations=8, eval_every=10)))
    start = load_file(tiny_model_dir / "model.safetensors")
    assert len(engine.seen) == 6 and engine.loads == 6  # 3 steps x (policy, momentum), each synced first
    for step in (1, 2, 3):
        pol, mom = engine.seen[2 * (step - 1)], engine.seen[2 * (step - 1) + 1]
        if step == 1:  # both models are the start model
            assert same(pol, start) and same(mom, start)
            continue
        prev = run / f"step_{step - 1:06d}"  # the weights after the previous step's update
        assert same(pol, policy_weights(prev))
        assert same(mom, load_file(prev / "momentum.safetensors"))
        assert not same(mom, policy_weights(prev))  # the EMA lags: a policy copy would pass the line above too
    rows = read_metrics(run)
    assert rows[-1]["step"] == 3 and rows[3]["policy/entropy"] > 0  # the entropy the IQR filter reads was scored


def test_lora_engine_gets_the_adapter_merged_into_the_base(tiny_model_dir, tmp_path, engine):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    train(load_config(None, tiny_sets(tiny_model_dir, run, method="mgrpo", use_vllm="true", max_steps=2,
                                      num_generations=8, eval_every=10, use_peft="true",
                                      lora_target_modules="all-linear")))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = PeftModel.from_pretrained(base, run / "step_000001" / "policy").merge_and_unload()
    expect = {k: v for k, v in merged.named_parameters()}
    got = engine.seen[2]  # step 2's policy rollouts: the policy after step 1, adapter merged
    assert got.keys() == expect.keys()
    assert all(torch.allclose(got[k], expect[k], atol=1e-6) for k in expect)
    assert not same(got, load_file(tiny_model_dir / "model.safetensors"))


def test_engine_weights_of_a_peft_model_compute_what_the_adapter_computes(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), torch.device("cpu"))
    model = lora.add_lora(model, 4, 8, 0.0, "all-linear")
    lora.add_momentum_adapter(model)
    with torch.no_grad():
        for p in lora.adapter_state(model, lora.MOMENTUM).values():
            p.add_(0.3 * torch.randn_like(p))  # momentum differs from the (still zero-delta) policy adapter
    before = {k: v.clone() for k, v in model.named_parameters()}
    plain, _ = load_model(str(tiny_model_dir), torch.device("cpu"))
    params = dict(plain.named_parameters())
    with torch.no_grad():
        for name, w in vllm_backend.engine_weights(model, lora.MOMENTUM):
            params[name].copy_(w)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad(), lora.active_adapter(model, lora.MOMENTUM):
        want = model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, want, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())  # the base was not merged in place


def test_rollouts_from_token_lists_match_the_hf_layout(tiny_model_dir):
    _, tok = load_model(str(tiny_model_dir), torch.device("cpu"))
    batch = encode_prompts(tok, ["1+2=", "10+20="], torch.device("cpu"))
    eos = tok.eos_token_id
    seqs = [[4, 5, eos], [6], [7, eos, 8], [4, 4, 4, 4, 4]]  # k = 2 per prompt; the last runs past max_new_tokens
    ro = vllm_backend.to_rollouts(seqs, batch["input_ids"], batch["attention_mask"], 2, tok, [eos], max_new_tokens=4)
    assert ro.response_ids.shape == (4, 4)
    # masks: up to and including the first EOS, cut at 4 tokens; what follows an EOS is dropped
    assert ro.response_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert ro.response_ids[2].tolist() == [7, eos, tok.pad_token_id, tok.pad_token_id]
    assert ro.texts == [tok.decode([4, 5]), tok.decode([6]), tok.decode([7]), tok.decode([4] * 4)]
    assert torch.equal(ro.input_ids[:2, : ro.prompt_len], batch["input_ids"][[0, 0]])


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                    reason="GPU only: needs CUDA and the vllm package (pip install -e '.[vllm]')")
def test_real_vllm_engine_trains_and_holds_the_current_ema(tiny_model_dir, tmp_path):
    """The real engine: 2 mgrpo steps, then the engine's own weights are the momentum EMA the run checkpointed."""
    from selfrl.run import setup

    run = tmp_path / "run"
    cfg = load_config(None, tiny_sets(tiny_model_dir, run, method="mgrpo", use_vllm="true", max_steps=2,
                                      num_generations=8, device="cuda", vllm_gpu_memory_utilization=0.2))
    train(cfg)
    assert read_metrics(run)[-1]["step"] == 2
    s = setup(load_config(run / "config.yaml", [f"output_dir={run}"]), resume=True)
    s.sampler.load(vllm_backend.engine_weights(s.momentum, lora.MOMENTUM))
    held = dict(s.sampler.engine.llm_engine.model_executor.driver_worker.model_runner.model.named_parameters())
    ema = load_file(run / "step_000002" / "momentum.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"  # a weight vLLM keeps unfused under its HF name
    assert torch.allclose(held[name].float().cpu(), ema[name], atol=1e-3)


def test_an_engine_per_process_holds_the_gathered_policy_and_ema_every_step(tiny_model_dir, tmp_path):
    """2 processes, fsdp: each process's own engine is loaded with the WHOLE current policy and then the whole current
    EMA before each generation (gathered from the shards), every step."""
    import json
    import os
    import subprocess
    import sys

    from selfrl import fsdp
    from selfrl.distributed import checksum
    from tests.test_distributed import ROOT, _free_port, as_args

    run, record = tmp_path / "run", tmp_path / "record"
    record.mkdir()
    sets = tiny_sets(tiny_model_dir, run, method="mgrpo", use_vllm="true", fsdp="true", max_steps=3,
                     num_generations=8, eval_every=10, torch_threads=1)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "tests.vllm_child", str(record), "train", *as_args(sets)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = checksum(load_file(tiny_model_dir / "model.safetensors").values())
    for rank in (0, 1):
        rows = [json.loads(x) for x in (record / f"engine_{rank}.jsonl").read_text().splitlines()]
        assert [r["loads"] for r in rows] == list(range(1, 7))  # 3 steps x (policy, momentum), each synced first
        for step in (1, 2, 3):
            pol, mom = rows[2 * (step - 1)]["checksum"], rows[2 * (step - 1) + 1]["checksum"]
            if step == 1:
                assert pol == pytest.approx(start, rel=1e-9) and mom == pytest.approx(start, rel=1e-9)
                continue
            shards = run / f"step_{step - 1:06d}" / "shards"
            # the engine holds each parameter once; the saved state also names the tied head (lm_head = embeddings)
            want_pol, want_mom = ({k: v for k, v in fsdp.full_state_dict(shards, name).items() if k != "lm_head.weight"}
                                  for name in ("policy", "momentum"))
            assert pol == pytest.approx(checksum(want_pol.values()), rel=1e-9, abs=1e-9), (rank, step)
            assert mom == pytest.approx(checksum(want_mom.values()), rel=1e-9, abs=1e-9), (rank, step)
            assert abs(pol - mom) > 1e-6  # the EMA lags the policy
