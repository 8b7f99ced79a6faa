"""The trainer's step end to end on the tiny model (issue 21): the IQR filter's drops leave the vote, the advantages
and the loss; TTRL votes over num_votes and trains the first num_generations; num_iterations makes epsilon act."""
from __future__ import annotations

import pytest
import torch

import selfrl.grpo as grpo
from selfrl import core
from selfrl.grpo import grpo_step, train
from selfrl.grpo_config import load_config
from selfrl.run import setup
from tests.conftest import tiny_sets

OFF = torch.autocast("cpu", enabled=False)


def spy(monkeypatch, name, calls):
    real = getattr(core, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(grpo.core, name, wrapper)


def test_iqr_drops_leave_vote_advantages_and_loss(tiny_model_dir, tmp_path, monkeypatch):
    s = setup(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "iqr", method="mgrpo", iqr_filter="true",
                                          num_generations=4, num_momentum_generations=1)))
    B, G, M, N = s.cfg.sizes()  # 4 prompts, G = 4 pooled (3 policy + 1 momentum), M = 3 trained
    # Drop voter 0 (a trained policy rollout) of every prompt and voter 3 (the momentum rollout) of prompt 0.
    forced = torch.ones(B, G, dtype=torch.bool)
    forced[:, 0] = False
    forced[0, 3] = False
    monkeypatch.setattr(grpo.core, "iqr_keep_mask", lambda H, k: forced.clone())
    votes, advs, losses = [], [], []
    spy(monkeypatch, "vote_texts", votes)
    spy(monkeypatch, "group_advantages", advs)
    spy(monkeypatch, "policy_loss", losses)
    out = grpo_step(s, 1, s.cfg.sizes(), OFF)
    assert [list(c[0][3]) for c in votes] == forced.tolist()  # each prompt's vote saw exactly the survivors
    rewards, keep_train = advs[0][0]
    assert torch.equal(keep_train, forced[:, :M])
    assert (advs[0][2][:, 0] == 0).all()  # a dropped rollout gets no advantage
    assert out.metrics["filter/dropped"] == B + 1  # 4 policy rows + 1 momentum row
    assert out.metrics["filter/trained_dropped_frac"] == pytest.approx(1 / M)  # one of each prompt's M trained rows
    assert out.metrics["filter/dropped_frac"] == pytest.approx((B + 1) / (B * G))
    # the loss mask of every dropped trained row is zero (rows that stay in the loss are the live ones)
    (logp, old, adv, mask, *_), _, _ = losses[0]
    assert mask.shape[0] <= B * (M - 1) and mask.sum() > 0


def test_ttrl_votes_over_num_votes_and_trains_the_first_num_generations(tiny_model_dir, tmp_path, monkeypatch):
    s = setup(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "ttrl", method="ttrl", num_generations=4,
                                          num_votes=6)))
    votes, rewards = [], []
    spy(monkeypatch, "vote_texts", votes)
    spy(monkeypatch, "match_rewards", rewards)
    out = grpo_step(s, 1, s.cfg.sizes(), OFF)
    assert [len(c[0][0]) for c in votes] == [6] * 4  # 6 voters per prompt
    assert [len(c[0][0]) for c in rewards] == [4] * 4  # the first 4 of them are rewarded (and trained)
    assert all(c[0][0] == v[2][0][:4] for c, v in zip(rewards, votes))  # ... and they are the vote's first 4 answers
    assert out.weights["policy/response_length"] == 4 * 4


def test_num_iterations_lets_the_clip_act(tiny_model_dir, tmp_path):
    one = train(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "one", method="srt", max_steps=3)))
    many = train(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "many", method="srt", max_steps=3,
                                             num_iterations=4, learning_rate=5e-2)))
    import json

    clip = lambda d: [json.loads(l).get("loss/clip_frac") for l in (d / "metrics.jsonl").read_text().splitlines()][1:]
    assert clip(one) == [0.0, 0.0, 0.0]  # one pass: ratio 1, the clip never acts
    assert max(clip(many)) > 0  # later passes move the ratio past 1 ± epsilon


def test_cosine_anneal_by_hand():
    # end + (start - end)(1 + cos(pi t / T)) / 2 with start 0.01, end 1e-5, T = 100, t = step - 1
    assert core.cosine_anneal(1, 100, 0.01, 1e-5) == 0.01  # t = 0: cos 0 = 1 -> start
    assert abs(core.cosine_anneal(51, 100, 0.01, 1e-5) - (1e-5 + 0.5 * (0.01 - 1e-5))) < 1e-15  # t = 50: cos(pi/2) = 0
    assert core.cosine_anneal(101, 100, 0.01, 1e-5) == 1e-5 == core.cosine_anneal(500, 100, 0.01, 1e-5)  # t clipped


def test_corewarding_labels_are_the_teachers_vote(tiny_model_dir, tmp_path, monkeypatch):
    s = setup(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "co", method="corewarding", num_generations=4,
                                          num_momentum_generations=3, beta=0.001)))
    B, G, M, N = s.cfg.sizes()
    assert (G, M, N) == (7, 4, 3)  # the policy samples num_generations = 4, the teacher 3 more
    assert s.ref is None and s.momentum is not None  # the teacher is the KL reference: no third model
    votes = []
    spy(monkeypatch, "vote_texts", votes)
    out = grpo_step(s, 1, s.cfg.sizes(), OFF)
    for args, _, _ in votes:  # the 4 policy rollouts abstain, the 3 teacher rollouts vote
        assert list(args[3]) == [False] * 4 + [True] * 3
    # step 1 of max_steps 2: alpha = 0.01, so the teacher moved 1% of the way to the policy
    assert abs(out.metrics["anchor/ema_decay"] - 0.99) < 1e-12 and out.metrics["anchor/kl"] is not None


def test_ema_decay_end_schedules_the_momentum_models_rate(tiny_model_dir, tmp_path):
    """Opt-in: mgrpo's momentum rate 1 - m rises from 1 - ema_decay to 1 - ema_decay_end along cosine_anneal, and
    each step's update uses that step's m."""
    s = setup(load_config(None, tiny_sets(tiny_model_dir, tmp_path / "m", method="mgrpo", num_generations=4,
                                          num_momentum_generations=2, ema_decay=0.9, ema_decay_end=0.5,
                                          max_steps=3)))
    for step in (1, 2, 3):
        before = [p.detach().clone() for p in s.momentum.parameters()]
        out = grpo_step(s, step, s.cfg.sizes(), OFF)
        m = 1.0 - core.cosine_anneal(step, 3, 0.1, 0.5)  # steps 1, 2, 3: rate 0.1, 0.2, 0.4
        assert abs(out.metrics["anchor/ema_decay"] - m) < 1e-12
        moved = [(p.detach() - b) for p, b in zip(s.momentum.parameters(), before)]
        want = [(1 - m) * (q.detach().float() - b) for q, b in zip(s.model.parameters(), before)]
        assert max(a.abs().max().item() for a in moved) > 1e-4  # the policy stepped, so the momentum model moved
        assert max((a - w).abs().max().item() for a, w in zip(moved, want)) < 1e-5
    assert [round(1 - core.cosine_anneal(k, 3, 0.1, 0.5), 6) for k in (1, 2, 3)] == [0.9, 0.8, 0.6]


def test_vote_ties_momentum_reads_the_pool_from_the_momentum_voters(tiny_model_dir, tmp_path, monkeypatch):
    sets = dict(method="mgrpo", num_generations=4, num_momentum_generations=1)
    for ties, first in (("policy", 0), ("momentum", 3)):  # pool [3 policy | 1 momentum]: momentum is voter 3
        s = setup(load_config(None, tiny_sets(tiny_model_dir, tmp_path / ties, vote_ties=ties, **sets)))
        votes, rewards = [], []
        spy(monkeypatch, "vote_texts", votes)
        spy(monkeypatch, "match_rewards", rewards)
        grpo_step(s, 1, s.cfg.sizes(), OFF)
        assert [c[0][4] for c in votes] == [first] * 4  # every prompt's vote starts reading at `first`
        # the rewards still go to the 3 trained policy answers, in pool order, against that vote's label
        assert all(r[0][0] == v[2][0][:3] and r[0][1] == v[2][1] for r, v in zip(rewards, votes))


def test_sampled_evaluation_is_logged_and_never_moves_training(tiny_model_dir, tmp_path):
    """val/mean@k and val/maj@k at every evaluation (issue 14 item 2), from an RNG stream of their own: the same run
    with and without them trains bit-identically."""
    import json

    rows = {}
    for k in (0, 4):
        out = train(load_config(None, tiny_sets(tiny_model_dir, tmp_path / f"k{k}", method="srt", max_steps=3,
                                                eval_samples=k)))
        rows[k] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows[0], rows[4]):
        assert {k: v for k, v in a.items() if not k.startswith(("time/", "val/"))} == \
            {k: v for k, v in b.items() if not k.startswith(("time/", "val/"))}
        assert a["val/accuracy"] == b["val/accuracy"] and "val/mean@k" not in a
        assert 0.0 <= b["val/mean@k"] <= 1.0 and 0.0 <= b["val/maj@k"] <= 1.0
