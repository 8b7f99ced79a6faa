"""The learning proposer (selfrl/proposer_rl.py): its GRPO step moves log-probs the way the reward says, the loop of
rounds runs on a tiny chat model, resumes to the same files, and a bad config is one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfrl import proposer_rl
from selfrl.errors import ConfigError
from selfrl.rollout import Rollouts, encode_prompts, score
from selfrl.synth import SynthConfig, load_synth_config, run_synth
from tests.test_synth import FIRST_CHAR, chat_model_dir, synth_sets  # noqa: F401 - chat_model_dir is a fixture


def _load(path: Path):
    from selfrl.models import load_model

    model, tok = load_model(str(path), torch.device("cpu"))
    return model, tok


def test_reward_reaches_the_loss_in_the_right_direction(chat_model_dir):
    """Each group's first question gets reward 1, the others 0: A = (1 - 1/4) / std > 0 for it and < 0 for the rest
    (core.group_advantages), so one small step raises the rewarded questions' log-probs and lowers the others'."""
    model, tok = _load(chat_model_dir)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = SynthConfig(num_generations=4, max_completion_length=6, temperature=1.0)
    prompts = ["User: a\nAssistant:", "User: b\nAssistant:"]
    seen: dict = {}

    def judge(texts, shown):
        seen["texts"] = texts
        return [{"proposer_reward": float(j % 4 == 0), "reason": None, "question": t, "majority_share": 0.5}
                for j, t in enumerate(texts)]

    real_generate = proposer_rl.generate

    def recording(*args, **kw):
        seen["ro"] = real_generate(*args, **kw)
        return seen["ro"]

    proposer_rl.generate = recording
    try:
        torch.manual_seed(0)
        _, metrics = proposer_rl.proposer_step(model, opt, tok, prompts, [[], []], cfg, judge)
    finally:
        proposer_rl.generate = real_generate
    ro: Rollouts = seen["ro"]
    before = ro.logp.sum(1)  # (8,) sampling-time log-probs of each written question
    with torch.no_grad():
        after = score(model, ro, 1.0, stats=False)[0].mul(ro.response_mask).sum(1)
    delta = after - before  # (8,) change of each question's log-prob
    rewarded = torch.tensor([j % 4 == 0 for j in range(8)])
    adv = torch.where(rewarded, 1.5, -0.5)  # r - mean = 3/4, -1/4; unbiased std = 1/2 -> A = 1.5, -0.5 (eps aside)
    assert metrics["proposer/reward"] == pytest.approx(0.25)
    # To first order a policy-gradient step changes logp_i by lr * g_i . sum_j A_j g_j / n, so sum_i A_i delta_i =
    # lr * |sum_j A_j g_j|^2 / n > 0: the advantage-weighted change is positive, and the rewarded rows gain most.
    assert (adv * delta).sum() > 0
    assert delta[rewarded].mean() > 0 > delta[~rewarded].mean(), delta


def test_zero_reward_everywhere_is_no_update(chat_model_dir):
    """Equal rewards in a group give A = 0 for all: the loss's gradient is zero and the weights stay put."""
    model, tok = _load(chat_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    cfg = SynthConfig(num_generations=3, max_completion_length=4)
    judge = lambda texts, shown: [{"proposer_reward": 0.0, "reason": "empty", "question": None,  # noqa: E731
                                   "majority_share": None} for _ in texts]
    proposer_rl.proposer_step(model, opt, tok, ["User: a\nAssistant:"], [[]], cfg, judge)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _loop_sets(model: Path, out: Path, solver_yaml: Path, **extra) -> list[str]:
    base = dict(task=FIRST_CHAR, num_prompts=4, num_generations=2, num_votes=4, solver_config=solver_yaml,
                proposer_training="true", rounds=2, solver_steps=1, proposer_steps=2, proposer_prompts_per_step=2,
                proposer_learning_rate=1e-2, seed=3)
    base.update(extra)
    return synth_sets(model, out, **base)


@pytest.fixture
def solver_yaml(tmp_path) -> Path:
    path = tmp_path / "solver.yaml"
    path.write_text("method: srt\nprompts_per_step: 2\nnum_generations: 2\nmax_completion_length: 4\n"
                    "learning_rate: 0.01\nlr_scheduler_type: constant\nwarmup_ratio: 0.0\nbeta: 0.0\neval_limit: 4\n"
                    "eval_samples: 1\neval_every: 1\nsave_every: 1\ngold_diagnostics: false\nreport_to: none\n"
                    "device: cpu\n")
    return path


def test_loop_runs_trains_both_and_resumes_to_the_same_files(chat_model_dir, tmp_path, solver_yaml, monkeypatch):
    from safetensors.torch import load_file

    whole = tmp_path / "whole"
    report = run_synth(load_synth_config(None, _loop_sets(chat_model_dir, whole, solver_yaml)))
    assert report["counts"]["generated"] == 2 * 4 * 2  # rounds x num_prompts x num_generations
    steps = [json.loads(line) for line in (whole / "proposer.jsonl").read_text().splitlines()]
    assert [(m["round"], m["step"]) for m in steps] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    assert any(m["grad/norm"] > 0 for m in steps)  # some group's rewards differed: the proposer got a gradient
    start = load_file(chat_model_dir / "model.safetensors")
    for trained in (whole / "proposer" / "round_2" / "model.safetensors",
                    whole / "solver" / "round_2" / "step_000001" / "policy" / "model.safetensors"):
        after = load_file(trained)
        assert max((after[k] - start[k]).abs().max().item() for k in start) > 0
    lines = [json.loads(line) for line in (whole / "questions.jsonl").read_text().splitlines()]
    assert {q["step"] for q in lines} <= {1, 2} and all("answer" not in q for q in lines)

    # interrupted in round 2's solver training, then the same command again
    cut = tmp_path / "cut"
    real = proposer_rl.solver_round

    def crash(cfg, out, r, start_model, train_file):
        if r == 2:
            raise KeyboardInterrupt
        return real(cfg, out, r, start_model, train_file)

    monkeypatch.setattr(proposer_rl, "solver_round", crash)
    with pytest.raises(KeyboardInterrupt):
        run_synth(load_synth_config(None, _loop_sets(chat_model_dir, cut, solver_yaml)))
    monkeypatch.setattr(proposer_rl, "solver_round", real)
    with pytest.raises(Exception, match="proposer_learning_rate=0.01, not 0.02"):  # a changed config is refused
        run_synth(load_synth_config(None, _loop_sets(chat_model_dir, cut, solver_yaml, proposer_learning_rate=0.02)))
    run_synth(load_synth_config(None, _loop_sets(chat_model_dir, cut, solver_yaml)))
    for name in ("questions.jsonl", "proposer.jsonl", "rounds/round_2/candidates.jsonl"):
        assert (cut / name).read_text() == (whole / name).read_text(), name
    a = load_file(whole / "proposer" / "round_2" / "model.safetensors")
    b = load_file(cut / "proposer" / "round_2" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_proposer_config_is_one_line():
    with pytest.raises(ConfigError, match=r"proposer_training: must be false unless solver_config"):
        load_synth_config(None, ["proposer_training=true"])
    with pytest.raises(ConfigError, match=r"solver_config: no such file 'nope.yaml'"):
        load_synth_config(None, ["solver_config=nope.yaml"])
    with pytest.raises(ConfigError, match=r"rounds: must be >= 1, got 0"):
        load_synth_config(None, ["rounds=0"])
    proc = subprocess.run([sys.executable, "-m", "selfrl", "synth", "--set", "proposer_training=true"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "proposer_training: must be false unless" in proc.stderr


def test_the_writer_organisms_warm_up_holds_questions_only_from_the_sft_split():
    """organism2-writer's writing pairs (docs/synth.md): "q;q;q;q;" -> a fifth question and "#" -> a question, every
    question from the sft split, no answer anywhere, and the sums pairs last (the SFT holdout stays sums')."""
    from selfrl.organism import ORGANISM2, ORGANISM2_WRITER
    from selfrl.tasks.sums import SumsTask, SumsWriterTask

    sums, writer = SumsTask(), SumsWriterTask(num_in_context=300, num_direct=200)
    solving = sums.sft_examples()
    pairs = writer.sft_examples()
    assert pairs[-len(solving):] == solving  # organism2's pairs, unchanged and last
    writing = pairs[: -len(solving)]
    sft_qs = {q for q, _ in solving}
    others = set(sums.train_prompts()) | {q for s in ("val", "test") for q, _ in sums.eval_examples(s)}
    assert sum(p == "#" for p, _ in writing) == 200
    for prompt, question in writing:
        shown = [] if prompt == "#" else prompt.split(";")[:-1]
        assert prompt == "#" or (len(shown) == 4 and prompt.endswith(";") and question not in shown)
        assert {question, *shown} <= sft_qs and not ({question, *shown} & others)
        assert question.endswith("=") and question.count("=") == 1  # a question, never a worked answer
    assert ORGANISM2_WRITER.key() != ORGANISM2.key()  # its own cache entry: organism2 is untouched
