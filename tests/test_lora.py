"""LoRA through peft (issue 5): the momentum model is an EMA of the adapters alone, generates by switching adapters,
the KL reference is the base with adapters off, and a LoRA run checkpoints, resumes, evaluates and exports."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from selfrl import core, lora
from selfrl.grpo_config import load_config
from selfrl.logger import read_metrics
from selfrl.models import load_model
from selfrl.grpo import as_momentum, as_reference, train
from selfrl.run import setup
from tests.conftest import tiny_sets
from tests.test_cli import run_cli
from tests.test_determinism import crash_and_resume, metrics

LORA = dict(use_peft="true", lora_target_modules="all-linear", method="mgrpo", torch_threads=1)


def peft_model(model_dir):
    model, tok = load_model(str(model_dir), torch.device("cpu"))
    model = lora.add_lora(model, r=4, alpha=8, dropout=0.0, target_modules="q_proj,v_proj")
    lora.add_momentum_adapter(model)
    return model, tok


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_momentum_adapter_starts_as_a_frozen_copy_and_only_the_policy_trains(tiny_model_dir):
    model, _ = peft_model(tiny_model_dir)
    ema, src = lora.adapter_pairs(model)
    # 2 layers x (q_proj, v_proj) x (lora_A, lora_B) = 8 tensors per adapter
    assert len(ema) == len(src) == 8
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in zip(ema, src))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora.adapter_state(model, lora.POLICY))  # no base weight, no momentum weight
    with lora.active_adapter(model, lora.MOMENTUM):
        assert not any(p.requires_grad for p in model.parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # restored after the switch


def test_generation_under_the_momentum_adapter_uses_the_current_ema(tiny_model_dir):
    """After a policy change and one EMA update, the momentum view computes exactly what a model whose policy adapter
    holds the EMA weights computes; a stale copy (the pre-update weights) would compute something else."""
    torch.manual_seed(0)  # the perturbation below: the same numbers whatever ran before
    model, _ = peft_model(tiny_model_dir)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    ema, src = lora.adapter_pairs(model)
    stale = [t.detach().clone() for t in ema]
    with torch.no_grad():
        for p in src:
            p.add_(torch.randn_like(p))  # a policy update (lora_B leaves 0, so the output changes)
    core.ema_update_(ema, [p.detach() for p in src], 0.9)
    for e, old, p in zip(ema, stale, src):  # θk = 0.9·θk + 0.1·θq, elementwise (lerp rounds differently: 1e-6)
        assert torch.allclose(e, 0.9 * old + 0.1 * p.detach(), atol=1e-6)
    with lora.active_adapter(model, lora.MOMENTUM) as m:
        got = logits(m, ids)
    expect_model, _ = peft_model(tiny_model_dir)
    for dst, e in zip(lora.adapter_pairs(expect_model)[1], ema):
        dst.data.copy_(e)
    assert torch.allclose(got, logits(expect_model, ids), atol=1e-6)
    for dst, old in zip(lora.adapter_pairs(expect_model)[1], stale):
        dst.data.copy_(old)
    assert not torch.allclose(got, logits(expect_model, ids), atol=1e-4)
    assert not torch.allclose(got, logits(model, ids), atol=1e-4)  # and the policy adapter is back in charge


def test_lora_setup_keeps_no_full_copy(tiny_model_dir, tmp_path):
    s = setup(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "run", beta=0.005, **LORA)))
    assert s.momentum is None and s.ref is None  # neither a momentum copy nor a reference copy of the base
    opt = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert opt == {id(p) for p in lora.adapter_state(s.model, lora.POLICY).values()}
    assert set(s.momentum_state) == set(lora.adapter_state(s.model, lora.MOMENTUM))
    ids = torch.tensor([[3, 4, 5]])
    base, _ = load_model(str(tiny_model_dir), torch.device("cpu"))
    with as_reference(s) as ref:
        assert torch.allclose(logits(ref, ids), logits(base, ids), atol=1e-6)
    with torch.no_grad():
        for p in lora.adapter_state(s.model, lora.POLICY).values():
            p.add_(0.5)
    with as_reference(s) as ref:  # adapters off: still the base, however far the policy moved
        assert torch.allclose(logits(ref, ids), logits(base, ids), atol=1e-6)
    with as_momentum(s) as mom:  # the momentum adapter did not move
        assert torch.allclose(logits(mom, ids), logits(base, ids), atol=1e-6)
    assert not torch.allclose(logits(s.model, ids), logits(base, ids), atol=1e-4)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("lora") / "run"
    train(load_config(None, tiny_sets(tiny_model_dir, run, max_steps=3, beta=0.005, **LORA)))
    return run


def test_lora_run_trains_the_adapter_and_anchors_on_the_base(tiny_model_dir, lora_run):
    rows = read_metrics(lora_run)
    # Step 1: B = 0, so the policy is the base and its k3 KL to the base (the reference) is exactly 0; later it is not.
    assert rows[1]["loss/kl"] == 0.0 and rows[3]["loss/kl"] > 0
    assert rows[3]["anchor/kl"] > 0
    adapter = load_file(lora_run / "step_000003" / "policy" / "adapter_model.safetensors")
    momentum = load_file(lora_run / "step_000003" / "momentum.safetensors")
    assert not (lora_run / "step_000003" / "policy" / "model.safetensors").exists()  # the base is not copied
    assert len(adapter) == len(momentum) > 0
    assert max(v.abs().max().item() for k, v in adapter.items() if "lora_B" in k) > 0  # the adapter trained
    for k, v in adapter.items():  # the momentum adapter lags the policy one: same names, different values
        m = momentum[k.replace(".weight", f".{lora.MOMENTUM}.weight")]
        assert m.shape == v.shape
    assert any(not torch.equal(momentum[k.replace(".weight", f".{lora.MOMENTUM}.weight")], v) for k, v in adapter.items())


def test_lora_resume_replays_exactly(tiny_model_dir, lora_run, tmp_path):
    cut = tmp_path / "cut"
    crash_and_resume(lora_run, cut, lost_step=3, logged_to=2)  # resumes from step 2's adapters, base reloaded
    assert metrics(cut) == metrics(lora_run)
    for f in ("policy/adapter_model.safetensors", "momentum.safetensors"):
        a, b = load_file(lora_run / "step_000003" / f), load_file(cut / "step_000003" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_merges_the_adapter_into_a_plain_hf_model(tiny_model_dir, lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "exported"
    proc = run_cli("export", str(lora_run / "step_000003"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in exported.state_dict())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = PeftModel.from_pretrained(base, lora_run / "step_000003" / "policy")  # adapter applied, not merged
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    assert torch.allclose(logits(exported, ids), logits(trained, ids), atol=1e-5)
    assert not torch.allclose(logits(exported, ids), logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ids),
                              atol=1e-4)


def test_eval_loads_a_lora_checkpoint(lora_run):
    proc = run_cli("eval", str(lora_run), "--max-completion-length", "12", "--limit", "8", "--split", "val")
    assert proc.returncode == 0, proc.stderr
    assert "val accuracy (greedy, n=8)" in proc.stdout
