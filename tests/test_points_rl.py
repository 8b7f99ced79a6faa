"""Multi-turn GRPO on GeneralPoints (selfrl/points_rl.py): what the loss sees, the SFT arm's token count, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from selfrl import core, points_rl
from selfrl.errors import ConfigError
from selfrl.organism import build_model, build_tokenizer
from selfrl.points_organism import CHARS, PointsOrganismSpec, load_points_organism
from selfrl.points_rl import PointsConfig, load_points_config, sft_schedule, train_points
from selfrl.tasks.points import PointsTask, answer_text, feedback, score, solutions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_points_dir(tmp_path_factory) -> Path:
    """An untrained character-level model with the organism's tokenizer: the loss and masks do not need a good one."""
    out = tmp_path_factory.mktemp("tiny_points")
    tok = build_tokenizer(CHARS)
    spec = PointsOrganismSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    build_model(spec, len(tok), 1024).save_pretrained(out)
    tok.save_pretrained(out)
    return out


HAND = PointsTask(style="compact").hands("train")[0]  # 7, 9, K, A under the ID rule: values 7, 9, 10, 1
WRONG = '{"cards": [], "number": [], "formula": "7+9+10+1=24"}'  # legal, but 27: reward -1


def scripted_generate(prompts_seen: list[str]):
    """Replaces rollout.generate: row r answers wrongly on its first attempt when r is odd, then correctly; even
    rows answer correctly at once. So a group of 2 gets episode rewards 5 and -1 + 5 = 4: advantages +-0.707."""
    def fake(model, tokenizer, batch, k, max_new_tokens, temperature=1.0, greedy=False):
        prompts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False)
        prompts = [p.replace(tokenizer.pad_token, "") for p in prompts]
        prompts_seen.extend(prompts)
        texts = []
        for r, p in enumerate(prompts):
            first_turn = "You failed" not in p
            texts.append(WRONG if first_turn and r % 2 else answer_text(HAND, solutions(tuple(sorted(HAND.values)))[0]))
        return SimpleNamespace(texts=texts, response_mask=torch.ones(len(texts), 3))
    return fake


def test_two_steps_multi_turn_loss_sees_model_tokens_only(tiny_points_dir, tmp_path, monkeypatch):
    seen_prompts, seen_losses, seen_batches = [], [], []
    real_policy_loss, real_episode_batch = core.policy_loss, points_rl.episode_batch

    def spy(logp, old_logp, advantages, mask, **kw):
        seen_losses.append((mask.clone(), advantages.clone()))
        return real_policy_loss(logp, old_logp, advantages, mask, **kw)

    hand = HAND  # every training episode plays this hand
    assert score(hand, WRONG)[0] == -1
    real_hands = PointsTask.hands
    monkeypatch.setattr(PointsTask, "hands",
                        lambda self, split: [hand] * 8 if split == "train" else real_hands(self, split))
    monkeypatch.setattr(points_rl, "generate", scripted_generate(seen_prompts))
    monkeypatch.setattr(core, "policy_loss", spy)
    monkeypatch.setattr(points_rl, "episode_batch", lambda eps, pad: seen_batches.append(real_episode_batch(eps, pad))
                        or seen_batches[-1])
    cfg = PointsConfig(model_name_or_path=str(tiny_points_dir), output_dir=str(tmp_path / "run"), max_steps=2,
                       hands_per_step=1, num_generations=2, max_turns=3, eval_points=1, eval_hands=2, eval_turns=1,
                       max_completion_length=8, save_model=True).validate()
    start, tok = points_rl.load_start(cfg)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    summary = train_points(cfg)

    # The second turn's prompt holds the first attempt and the verifier's reason for the failure.
    second = [p for p in seen_prompts if "You failed this trial because" in p]
    verifier = feedback(score(hand, WRONG)[1])  # "You failed this trial because ..."
    assert second and all(p.endswith(WRONG + tok.eos_token + verifier + "\n") for p in second)

    # What the loss saw: 2 steps' masks; advantages of rewards (5, 4): mean 4.5, unbiased std 0.7071 -> +-0.7071.
    assert len(seen_losses) == 2
    correct = answer_text(hand, solutions(tuple(sorted(hand.values)))[0])
    for mask, adv in seen_losses:
        assert torch.allclose(adv, torch.tensor([0.7071, -0.7071]), atol=1e-3)
    # Rebuild the second row's episode text (wrong, verifier, correct) and check the shifted mask picks exactly the
    # two attempts and their EOS: the targets ids[1:] under mask == 1 decode to WRONG<eos>correct<eos>.
    row = points_rl.build_episode(hand, points_rl.prompt_text(hand, "compact"),
                                  [points_rl.Attempt(WRONG, -1, score(hand, WRONG)[1]),
                                   points_rl.Attempt(correct, 5, ["Correct solution"])], tok)
    ids = torch.tensor(row.input_ids)
    assert torch.equal(seen_batches[0]["input_ids"][1], ids)  # the batch the loss ran on holds exactly this episode
    mask = seen_losses[0][0][1]  # (T-1,) row 1 of step 1: the shifted mask the loss used
    picked = ids[1:][mask[: len(ids) - 1].bool()]
    assert tok.decode(picked, skip_special_tokens=False) == WRONG + tok.eos_token + correct + tok.eos_token
    assert int(mask.sum()) == len(WRONG) + len(correct) + 2  # one token per character, plus two EOS
    # The verifier's tokens start after the tokens of the text before it; target t+1 sits at position t of the
    # shifted mask, so they are mask[n0-1 : n0-1+nv] in what the loss saw: all 0.
    n0 = len(tok(row.text[: row.text.index(verifier)], add_special_tokens=False)["input_ids"])
    nv = len(tok(verifier, add_special_tokens=False)["input_ids"])
    assert tok.decode(ids[n0 : n0 + nv]) == verifier
    assert mask[n0 - 1 : n0 - 1 + nv].sum() == 0

    after = load_points_organism(tmp_path / "run" / "final")[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert summary["evals"][0]["step"] == 2 and "ood_no_rule/same_answer" in summary["evals"][0]


def test_sft_schedule_counts_the_real_batches():
    # Two sequences of 10 and 20 tokens, batches of 1. Each step costs 2 * length (forward + backward), so a budget
    # of 50 is reached after the draws sum to >= 50: the schedule's cumulative counts must be 2 * running sums.
    cfg = PointsConfig(method="sft", compute_budget=50, per_device_train_batch_size=1, eval_points=2, seed=3)
    steps, cumulative, marks = sft_schedule([10, 20], cfg)
    from selfrl.sft import sft_batches

    draws = [i[0] for i in sft_batches(2, 1, torch.Generator().manual_seed(3), steps, None)]
    running = [2 * sum([10, 20][d] for d in draws[: s + 1]) for s in range(steps)]
    assert cumulative == running and cumulative[-1] >= 50 and cumulative[-2] < 50
    assert marks[-1] == steps and cumulative[marks[0] - 1] >= 25 and (marks[0] == 1 or cumulative[marks[0] - 2] < 25)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="compute_budget"):
        PointsConfig(method="sft").validate()
    with pytest.raises(ConfigError, match="num_generations"):
        load_points_config(None, ["num_generations=1"])
    with pytest.raises(ConfigError, match="max_turn"):
        load_points_config(None, ["max_turn=3"])


def test_cli_two_step_run_writes_metrics(tiny_points_dir, tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    sets = [f"model_name_or_path={tiny_points_dir}", f"output_dir={out}", "max_steps=2", "hands_per_step=1",
            "num_generations=2", "max_turns=2", "max_completion_length=8", "eval_points=1", "eval_hands=2",
            "eval_turns=2", "save_model=false"]
    proc = subprocess.run([sys.executable, "-m", "selfrl", "points", *sum((["--set", s] for s in sets), [])],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward/episode" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["compute/tokens"] > 0 for r in train) and train[1]["compute/tokens"] > train[0]["compute/tokens"]
    assert any("id/success@1" in r for r in rows)


def test_rule_reading_counts_which_values_the_numbers_follow():
    from selfrl.points_rl import rule_reading
    from selfrl.tasks.points import OOD_FACES, Hand

    hand = Hand(("K", "2", "3", "4"), OOD_FACES)  # OOD values 13, 2, 3, 4; under the ID rule 10, 2, 3, 4
    answers = ['{"formula": "13+2*4-3+4"}',  # numbers 2, 3, 4, 4, 13: neither multiset
               '{"formula": "(13-2)*3-4*..."}',  # numbers 2, 3, 4, 13: the stated rule (format does not matter)
               '{"formula": "10*3-2-4=24"}',  # numbers 2, 3, 4, 10: the ID rule
               "no formula"]  # None: neither
    # 1 of 4 follows the stated rule, 1 of 4 the ID rule.
    assert rule_reading([hand] * 4, answers) == {"ood/numbers_stated_rule": 0.25, "ood/numbers_id_rule": 0.25}


def test_study_report_counts_seeds_from_the_runs(tmp_path):
    from selfrl.lab.points_study import PointsStudyConfig, write_points_report

    keys = {"id/success@1": 0.1, "id/success@3": 0.1, "id/success@5": 0.1, "id/reward@1": -1.0,
            "ood/success@1": 0.25, "ood/success@3": 0.25, "ood/success@5": 0.25, "ood/reward@1": -2.0,
            "ood_no_rule/success@1": 0.0, "ood_no_rule/same_answer": 0.0, "ood/numbers_stated_rule": 0.0,
            "ood/numbers_id_rule": 0.0}
    (tmp_path / "start.json").write_text(json.dumps({"start": "s", **keys}))
    # OOD success@1 at the end (start 0.25; binary fractions, so the changes are exact):
    ends = {"rl_t1": [0.375, 0.125], "rl_t2": [0.5, 0.5], "sft": [0.25, 0.0]}
    for arm, values in ends.items():
        for seed, v in enumerate(values):
            d = tmp_path / arm / f"seed_{seed}"
            d.mkdir(parents=True)
            d.joinpath("summary.json").write_text(json.dumps(
                {"config": {"seed": seed}, "evals": [{**keys, "ood/success@1": v, "compute/tokens": 100}]}))
            d.joinpath("metrics.jsonl").write_text(  # training rows: first-attempt reward -1 then -2 - seed
                json.dumps({"step": 1, "reward/first_attempt": -1.0, "reward/group_std": 1.0}) + "\n" +
                json.dumps({"step": 2, "reward/first_attempt": -2.0 - seed, "reward/group_std": 0.5 * seed}) + "\n")
    study = PointsStudyConfig(num_seeds=2, turns="1,2")
    write_points_report(tmp_path, study)
    report = (tmp_path / "report.md").read_text()
    # Changes in points: RL1 +12.5, -12.5 (mean 0.0, sd sqrt(2 * 12.5^2 / 1) = 17.7); SFT 0, -25. RL1 above SFT:
    # seed 0 (12.5 > 0) and seed 1 (-12.5 > -25): 2/2. RL2 +25, +25: 2/2. Mean OOD change by turns 0.0 -> +25.0.
    assert "| RL, 1 turn(s) | 2 | 100 | +0.0 ± 0.0 | +0.0 ± 17.7 | +0.0 ± 0.0 | +12.5, -12.5 | - |" in report
    assert "RL with 1 turn(s): OOD success@1 change above SFT's in 2/2 seeds" in report
    assert "More turns give more OOD gain: yes (mean OOD change by turns: 1: +0.0, 2: +25.0 points)" in report
    # Last-step training reward: seeds -2, -3 -> mean -2.50; group spread 0.0, 0.5 -> mean 0.25.
    assert "- RL, 1 turn(s): -1.00 -> -2.50; episode reward sd within groups at the last step: 0.25" in report
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_chat_model_plays_through_its_template_and_trains_on_its_own_turns(tmp_path, monkeypatch):
    """An HF chat model (a tiny random Qwen2 with a ChatML template, saved locally): `selfrl points` renders each
    episode through the template (the instruction prompt as the first user turn, the verifier's reasons as the next
    user turn) and the loss picks only the assistant turns and their end-of-turn tokens."""
    from selfrl.organism import OrganismSpec
    from tests.test_points import chat_tokenizer

    tok = chat_tokenizer()
    model_dir = tmp_path / "chat_model"
    model = build_model(OrganismSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                        len(tok), 2048)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    seen_prompts, seen_losses = [], []
    real_policy_loss = core.policy_loss
    monkeypatch.setattr(core, "policy_loss", lambda logp, old, adv, mask, **kw: seen_losses.append(mask.clone())
                        or real_policy_loss(logp, old, adv, mask, **kw))
    real_hands = PointsTask.hands
    monkeypatch.setattr(PointsTask, "hands",
                        lambda self, split: [HAND] * 8 if split == "train" else real_hands(self, split))
    monkeypatch.setattr(points_rl, "generate", scripted_generate(seen_prompts))
    cfg = PointsConfig(model_name_or_path=str(model_dir), output_dir=str(tmp_path / "run"), max_steps=1,
                       hands_per_step=1, num_generations=2, max_turns=2, eval_points=1, eval_hands=1, eval_turns=1,
                       max_completion_length=8, save_model=False).validate()
    train_points(cfg)

    first = [p for p in seen_prompts if "You failed" not in p]
    assert first and first[0].startswith("<|im_start|>user\nYou are an expert player")  # the instruction prompt
    assert first[0].endswith("<|im_end|>\n<|im_start|>assistant\n")  # opened for the assistant's turn
    verifier = feedback(score(HAND, WRONG)[1])
    second = [p for p in seen_prompts if "You failed" in p]
    assert second and all(p.endswith(WRONG + "<|im_end|>\n<|im_start|>user\n" + verifier + "<|im_end|>\n"
                                     "<|im_start|>assistant\n") for p in second)
    # Row 1 of the step: wrong, verifier, correct. The shifted loss mask picks WRONG<|im_end|>correct<|im_end|>.
    correct = answer_text(HAND, solutions(tuple(sorted(HAND.values)))[0])
    row = points_rl.build_episode(HAND, points_rl.prompt_text(HAND, "full"),
                                  [points_rl.Attempt(WRONG, -1, score(HAND, WRONG)[1]),
                                   points_rl.Attempt(correct, 5, ["Correct solution"])], tok, chat=True)
    ids = torch.tensor(row.input_ids)
    picked = ids[1:][seen_losses[0][1][: len(ids) - 1].bool()]
    assert tok.decode(picked, skip_special_tokens=False) == WRONG + "<|im_end|>" + correct + "<|im_end|>"


def test_organism_without_template_stays_plain(tiny_points_dir):
    from selfrl.tasks import use_chat_template

    _, tok = load_points_organism(tiny_points_dir)
    assert use_chat_template(tok, None, "organism") is False  # the compact question, plain text
    assert points_rl.no_rule_prompt(HAND, "full").count("Note that each card must be used exactly once") == 1
    assert HAND.rule not in points_rl.no_rule_prompt(HAND, "full")


def test_chat_model_sft_arm_trains_on_user_turn_to_answer(tmp_path, monkeypatch):
    """The SFT arm with a chat model: each pair is the question as a rendered user turn (generation prompt open) and
    the solver's answer as the assistant's text."""
    import selfrl.sft as sft_module
    from selfrl.organism import OrganismSpec
    from tests.test_points import chat_tokenizer

    tok = chat_tokenizer()
    model_dir = tmp_path / "chat_model"
    build_model(OrganismSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                len(tok), 2048).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    seen = []
    real = sft_module.sft
    monkeypatch.setattr(sft_module, "sft", lambda model, tokenizer, pairs, **kw: seen.extend(pairs)
                        or real(model, tokenizer, pairs, **kw))
    cfg = PointsConfig(method="sft", model_name_or_path=str(model_dir), output_dir=str(tmp_path / "run"),
                       compute_budget=3000, eval_points=1, eval_hands=1, eval_turns=1, max_completion_length=4,
                       save_model=False).validate()
    train_points(cfg)
    prompt, answer = seen[0]
    assert prompt.startswith("<|im_start|>user\nYou are an expert") and prompt.endswith("<|im_start|>assistant\n")
    assert json.loads(answer)["formula"].endswith("=24")
