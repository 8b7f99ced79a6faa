"""Issue 6 item 5: a NaN/inf loss or gradient skips the step (weights, optimizer, EMA untouched), is logged, and
`max_skipped_steps` in a row stop the run with a clear message, keeping the last good checkpoint."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import selfrl.grpo as train_mod
from selfrl.checkpoint import list_checkpoints, read_pointers
from selfrl.grpo_config import load_config
from selfrl.errors import SelfRLError
from selfrl.logger import read_metrics
from selfrl.grpo import train
from tests.conftest import policy_weights, same_tensors, tiny_sets

RUN = dict(method="mgrpo", max_steps=4, save_every=1, save_total_limit=None)


def poison(monkeypatch, bad_steps: set[int], kind: str) -> None:
    """Make core.policy_loss return a NaN loss (kind="loss") or a finite loss with a NaN gradient (kind="grad")."""
    real = train_mod.core.policy_loss
    calls = {"step": 0}

    def policy_loss(logp, old_logp, adv, mask, *args, **kwargs):
        calls["step"] += 1
        loss, metrics = real(logp, old_logp, adv, mask, *args, **kwargs)
        if calls["step"] in bad_steps:
            if kind == "loss":
                loss = loss * float("nan")
            else:  # d/dx sqrt(x) at 0 is inf, times the zero upstream gradient: NaN, while the value stays finite
                loss = loss + torch.sqrt((logp * 0).sum())
        return loss, metrics

    monkeypatch.setattr(train_mod.core, "policy_loss", policy_loss)


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_one_nonfinite_step_is_skipped_and_logged(tiny_model_dir, tmp_path, monkeypatch, kind):
    poison(monkeypatch, {2}, kind)
    run = tmp_path / "run"
    train(load_config(None, tiny_sets(tiny_model_dir, run, **RUN)))
    rows = {r["step"]: r for r in read_metrics(run)}
    assert [rows[s]["train/skipped"] for s in (1, 2, 3, 4)] == [0, 1, 0, 0]
    assert rows[2]["grad/norm"] is None  # NaN is logged as null
    # step 2 changed nothing: policy, momentum and optimizer state equal step 1's; step 3 trains again
    s1, s2, s3 = (run / f"step_00000{i}" for i in (1, 2, 3))
    assert same_tensors(policy_weights(s1), policy_weights(s2))
    assert same_tensors(load_file(s1 / "momentum.safetensors"), load_file(s2 / "momentum.safetensors"))
    opt1, opt2 = (torch.load(s / "optimizer.pt", weights_only=False) for s in (s1, s2))
    assert opt1["scheduler"] == opt2["scheduler"]
    assert opt1["optimizer"]["state"][0]["step"] == opt2["optimizer"]["state"][0]["step"]
    assert not same_tensors(policy_weights(s2), policy_weights(s3))
    assert all(torch.isfinite(v).all() for v in policy_weights(run / "step_000004").values())
    # the checkpoint after a skipped step is not pinned as healthy; the next clean one is
    assert read_pointers(run)["healthy"] == 4


def test_repeated_nonfinite_steps_stop_the_run_keeping_the_good_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    poison(monkeypatch, {2, 3, 4}, "loss")
    run = tmp_path / "run"
    with pytest.raises(SelfRLError, match=r"step 4: 3 steps in a row had a non-finite loss or gradient; stopping "
                                          r"\(last checkpoint kept: step_000003\)"):
        train(load_config(None, tiny_sets(tiny_model_dir, run, **RUN)))
    assert [p.name for p in list_checkpoints(run)] == ["step_000001", "step_000002", "step_000003"]
    assert read_pointers(run)["healthy"] == 1
    assert same_tensors(policy_weights(run / "step_000001"), policy_weights(run / "step_000003"))
    assert [r["train/skipped"] for r in read_metrics(run)[1:]] == [0, 1, 1, 1]
