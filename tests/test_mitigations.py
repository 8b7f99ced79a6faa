"""Issue 3's trainer options: Intuitor, SRT's four mitigations, and the label-free collapse detector."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from selfrl import core, detector
from selfrl.grpo_config import load_config
from selfrl.detector import CollapseDetector
from selfrl.errors import ConfigError
from selfrl.logger import read_metrics
from selfrl.mitigations import easiest
from selfrl.grpo import sample_batch, train
from selfrl.run import setup
from tests.conftest import policy_weights, same_tensors, tiny_sets


def metrics(run) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in read_metrics(run)]


# --- pure pieces ---------------------------------------------------------------------------------------------------
def test_self_certainty_hand_computed():
    # V = 2, logits [0, ln 3]: p = (1/4, 3/4). KL(U || p) = ½·ln(½ / ¼) + ½·ln(½ / ¾) = ½·ln 2 + ½·ln(2/3)
    # = ln 2 − ½·ln 3 ≈ 0.14384; the formula logsumexp − mean − ln V gives ln 4 − ½·ln 3 − ln 2, the same.
    got = core.self_certainty(torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0], [0.0, 20.0]]))
    assert got[0].item() == pytest.approx(math.log(2) - 0.5 * math.log(3), abs=1e-6)
    assert got[1].item() == pytest.approx(0.0, abs=1e-6)  # uniform: no certainty
    # No upper bound (ln V is the entropy's): logits [0, 20] give p0 = 1 / (1 + e^20), p1 = e^20 / (1 + e^20), and
    # KL(U || p) = -ln 2 - ½·ln(p0·p1) = -ln 2 - 10 + ln(1 + e^20) ≈ 9.30685, far above ln 2 ≈ 0.693.
    assert got[2].item() == pytest.approx(-math.log(2) - 10 + math.log1p(math.exp(20)), rel=1e-5)


def test_easiest_keeps_highest_shares():
    # shares 0.2, 0.9, 0.5, 0.9, 0.1, 0.6: a third of 6 = 2 prompts, the two with 0.9 (indices 1 and 3)
    assert easiest([0.2, 0.9, 0.5, 0.9, 0.1, 0.6], 1 / 3) == [1, 3]
    assert easiest([0.2, 0.9, 0.5], 1.0) == [0, 1, 2]
    assert easiest([0.2, 0.9, 0.5], 0.01) == [1]  # at least one prompt


def _rows(n, **values):
    return [dict(values) for _ in range(n)]


def test_detector_needs_two_signals_after_its_baseline():
    det = CollapseDetector(window=4, min_signals=2)
    # step 0: the start model's canary check, the agreement signal's baseline (0.5)
    assert not det.update({"step": 0, "canary/majority_share": 0.5, "canary/flip_rate": None}).alarm
    calm = {"policy/entropy": 0.2}
    readings = [det.update(r) for r in _rows(4, **calm)]  # steps 1-4: the entropy baseline window
    assert not any(r.alarm for r in readings)
    # Entropy 0.17 alone is one signal: no alarm. Window averages after k low steps: ((4−k)·0.2 + k·0.17)/4 =
    # 0.1925, 0.185, 0.1775: below 0.92 × 0.2 = 0.184 from k = 3.
    low = {"policy/entropy": 0.17}
    readings = [det.update(r) for r in _rows(4, **low)]
    assert [r.fired for r in readings] == [[], [], ["entropy_drop"], ["entropy_drop"]]
    assert not any(r.alarm for r in readings)
    # Canary checks: the flip-rate baseline takes the first two trained checks (0.4, 0.4); agreement 0.6 then 0.7
    # averages 0.65 over the last two checks, +0.15 over the start's 0.5 (> 0.12): the second signal, an alarm.
    r1 = det.update(dict(low, **{"canary/majority_share": 0.6, "canary/flip_rate": 0.4}))
    assert r1.fired == ["entropy_drop"] and not r1.alarm  # one check is not yet a two-check average
    r2 = det.update(dict(low, **{"canary/majority_share": 0.7, "canary/flip_rate": 0.4}))
    assert r2.alarm and set(r2.fired) == {"entropy_drop", "canary_agreement"}
    assert det.update(low).alarm  # a canary verdict holds between checks
    # flips stop: the next two checks average 0.25, more than 0.10 under the 0.4 baseline: the third signal
    det.update(dict(low, **{"canary/flip_rate": 0.25}))
    assert "flips_stop" in det.update(dict(low, **{"canary/flip_rate": 0.25})).fired


def test_detector_replay_matches_live_updates():
    live = CollapseDetector(window=3, min_signals=1)
    rows = [{"step": 0, "val/accuracy": 0.5, "canary/majority_share": 0.5}]
    rows += [{"step": s, "policy/entropy": 0.2 - 0.004 * s} for s in range(1, 12)]
    for s in (4, 8):
        rows[s]["canary/majority_share"] = 0.5 + 0.05 * s
    rows[6]["detector/rolled_back_to"] = 4
    for r in rows:
        live.update(r)
        if r.get("detector/rolled_back_to") is not None:
            live.reset_recent()
    again = CollapseDetector(window=3, min_signals=1)
    again.replay(rows)
    assert again.base == live.base and again.fired == live.fired
    assert {k: list(v) for k, v in again.recent.items()} == {k: list(v) for k, v in live.recent.items()}


# --- config --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets, field", [
    (["method=oracle", "offline_labels=true"], "offline_labels"),
    (["method=intuitor", "online_filter=0.6"], "offline_labels/online_filter"),
    (["curriculum_fraction=0"], "curriculum_fraction"),
    (["online_filter=1.5"], "online_filter"),
    (["collapse_detector=panic"], "collapse_detector"),
    (["rollback_lr_factor=0"], "rollback_lr_factor"),
])
def test_bad_mitigation_options_name_the_field(sets, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        load_config(None, sets)


# --- in the loop ---------------------------------------------------------------------------------------------------
def test_intuitor_rewards_self_certainty_and_trains(tiny_model_dir, tmp_path):
    run = tmp_path / "intuitor"
    train(load_config(None, tiny_sets(tiny_model_dir, run, method="intuitor")))
    rows = read_metrics(run)
    for r in rows[1:]:
        # The reward is a mean of per-token KL(U || p) values: positive (0 only for uniform distributions), with no
        # upper bound (test_self_certainty_hand_computed), never a 0/1 match.
        assert r["reward/pseudo"] > 0
        assert r["reward/pseudo"] not in (0.0, 1.0)
    assert not same_tensors(policy_weights(run / "step_000001"), policy_weights(run / "step_000002"))


def test_offline_labels_are_the_start_models_and_reach_the_reward(tiny_model_dir, tmp_path):
    run = tmp_path / "offline"
    cfg = load_config(None, tiny_sets(tiny_model_dir, run, method="srt", offline_labels="true", start_votes=3,
                                      max_steps=1))
    train(cfg)
    votes = json.loads((run / "start_votes.json").read_text())
    assert votes["n_votes"] == 3 and len(votes["labels"]) == 4000 and all(0 <= s <= 1 for s in votes["shares"])
    # The same run against stored labels no answer can match: every reward is 0, so the rewards come from the file.
    other = tmp_path / "impossible"
    other.mkdir()
    (other / "start_votes.json").write_text(json.dumps({**votes, "labels": ["-1"] * 4000}))
    train(load_config(None, tiny_sets(tiny_model_dir, other, method="srt", offline_labels="true", start_votes=3)))
    assert [r["reward/pseudo"] for r in read_metrics(other)[1:]] == [0.0, 0.0]


def test_curriculum_trains_only_the_easiest_prompts(tiny_model_dir, tmp_path):
    run = tmp_path / "cur"
    run.mkdir()
    shares = [0.0] * 4000
    easy = [7, 99, 1234, 3999]
    for i in easy:
        shares[i] = 1.0
    (run / "start_votes.json").write_text(json.dumps({"n_votes": 4, "labels": [None] * 4000, "shares": shares}))
    s = setup(load_config(None, tiny_sets(tiny_model_dir, run, method="srt", curriculum_fraction=0.001)))
    assert s.pool == easy  # round(0.001 · 4000) = 4 prompts
    ids, pol, _, drawn = sample_batch(s, 1, s.cfg.sizes(), torch.autocast("cpu", enabled=False))
    assert sorted(ids) == easy and drawn == 4 and len(pol.texts) == 16


def test_online_filter_keeps_only_agreeing_prompts(tiny_model_dir, tmp_path):
    s = setup(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "f", method="srt", online_filter=0.5,
                                          num_generations=4, prompts_per_step=4)))
    ids, pol, _, drawn = sample_batch(s, 1, s.cfg.sizes(), torch.autocast("cpu", enabled=False))
    assert 1 <= len(ids) <= 4 and drawn >= 4 and len(pol.texts) == 4 * len(ids)
    for i in range(len(ids)):
        answers = [s.task.extract_answer(t) for t in pol.texts[4 * i : 4 * i + 4]]
        assert core.majority_vote(answers, s.task.is_equivalent)[1] >= 0.5


def test_early_stopping_restores_its_best_checkpoint(tiny_model_dir, tmp_path):
    run = tmp_path / "es"
    train(load_config(None, tiny_sets(tiny_model_dir, run, method="srt", early_stopping_patience=1, max_steps=30,
                                      early_stopping_examples=8, save_every=0)))
    rows = read_metrics(run)
    last = rows[-1]
    assert last["step"] < 30 and last["stop/restored"] is not None  # it stopped early
    best = last["stop/restored"]
    accs = [r["stop/accuracy"] for r in rows if r["step"] <= best]
    assert max(accs) == accs[-1]  # the restored step was the best on the stopping split up to there
    assert same_tensors(policy_weights(run / f"step_{last['step']:06d}"), policy_weights(run / f"step_{best:06d}"))


@pytest.fixture
def always_firing(monkeypatch):
    """A detector signal that fires whenever its window is full, to drive the rollback path deterministically."""
    monkeypatch.setattr(detector, "SIGNALS", [detector.Signal("reward/pseudo", "always", "above_delta", -math.inf)])


def test_detector_rollback_then_stop(tiny_model_dir, tmp_path, always_firing):
    run = tmp_path / "det"
    train(load_config(None, tiny_sets(tiny_model_dir, run, method="srt", collapse_detector="rollback",
                                      detector_window=2, detector_min_signals=1, max_rollbacks=1, max_steps=10,
                                      save_total_limit="null")))
    rows = read_metrics(run)
    # Step 1 fills half the window (no signal) and is saved healthy; step 2 fires: back to step 1, lr halved.
    # Steps 3 (window refilling, healthy) and 4 (fires again, past max_rollbacks): back to 3, and the run stops.
    assert [r.get("detector/rolled_back_to") for r in rows] == [None, None, 1, None, 3]
    assert rows[3]["lr"] == pytest.approx(0.5e-2)
    assert same_tensors(policy_weights(run / "step_000004"), policy_weights(run / "step_000003"))


def test_detector_state_survives_resume(tiny_model_dir, tmp_path, always_firing):
    full, cut = tmp_path / "full", tmp_path / "cut"
    sets = dict(method="mgrpo", collapse_detector="rollback", detector_window=2, detector_min_signals=1,
                max_rollbacks=5, max_steps=6, rollback_ema_decay=0.5, save_total_limit="null")
    train(load_config(None, tiny_sets(tiny_model_dir, full, **sets)))
    shutil.copytree(full, cut)
    for step in (4, 5, 6):
        shutil.rmtree(cut / f"step_{step:06d}")
    train(load_config(cut / "config.yaml", [f"output_dir={cut}"]), resume=True)
    assert metrics(cut) == metrics(full)
    assert any(r.get("anchor/ema_decay") == 0.5 for r in read_metrics(full))
