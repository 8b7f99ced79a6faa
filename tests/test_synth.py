"""Question synthesis (selfrl/synth.py, selfrl/synth_filters.py): each filter on hand-made questions, the proposer's
reward on fixed vote shares, the config errors, and synthesized files that train through the CLI."""
from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import pytest

from selfrl.core import majority_vote
from selfrl.errors import ConfigError, SelfRLError
from selfrl.synth import SynthConfig, load_synth_config, run_synth, synthesis_prompts
from selfrl.synth_filters import (ContaminationIndex, JaccardIndex, band_reason, normalize, parse_question,
                                  proposer_rewards, text_filters, tokens, uncertainty_reward)
from selfrl.tasks.arith import ArithTask
from tests.conftest import tiny_sets

FIRST_CHAR = f"{Path(__file__).with_name('synth_tasks.py')}:FirstChar"
CHAT_TEMPLATE = ("{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}Assistant:{% endif %}")


def no_contamination() -> ContaminationIndex:
    return ContaminationIndex({"val": []})


# ------------------------------------------------------------------------------------------------ parse and length
def test_parse_drops_empty_and_unparseable():
    assert parse_question("") == (None, "empty")
    assert parse_question("  \n\t ") == (None, "empty")
    assert parse_question(None) == (None, "empty")  # not text at all
    assert parse_question("\n  What is 2+3?  \nAnswer: 5") == ("What is 2+3?", None)  # the first non-empty line
    arith = r"\d+\+\d+\+\d+="
    assert parse_question("=176;", arith) == (None, "unparseable")
    assert parse_question("x 12+34+56=102", arith) == ("12+34+56=", None)  # the first match
    assert parse_question("Q: Who? A: me", r"Q:(?P<q>.*?)A:") == ("Who?", None)  # the named group, stripped


def test_length_filter():
    reasons = text_filters(["ab", "abcd", "abcdefgh"], [], no_contamination(), min_length=3, max_length=6)
    assert reasons == ["too_short", None, "too_long"]  # 2 < 3; 3 <= 4 <= 6; 8 > 6


# ------------------------------------------------------------------------------------------------ duplicates
def test_normalisation_makes_spacing_and_case_one_question():
    assert tokens("What is 2+3?") == ("what", "is", "2", "+", "3", "?")
    assert normalize("12 + 34 + 56 =") == normalize("12+34+56=") == "12 + 34 + 56 ="
    assert normalize("ＷＨＡＴ is 2+3?") == normalize("what is 2 + 3 ?")  # NFKC folds fullwidth letters


def test_jaccard_index_is_exact():
    idx = JaccardIndex(n=3)
    assert idx.add("abcdef") == 0  # grams {abc, bcd, cde, def}
    assert idx.add("xyz") == 1  # shorter than or equal to n: its own single gram {xyz}
    # "abcdeg" -> {abc, bcd, cde, deg}: 3 shared with entry 0, union 4 + 4 - 3 = 5 -> 3/5
    assert idx.most_similar("abcdeg") == (0, pytest.approx(0.6))
    assert idx.most_similar("xyz") == (1, 1.0)
    assert idx.most_similar("qqqq") == (None, 0.0)  # shares no gram


def test_exact_and_near_duplicates_among_themselves_and_against_seeds():
    seed = "A farmer has 12 cows and buys 7 more. How many cows does he have now?"
    candidates = [
        "12+34+56=",
        "12 + 34 + 56 =",  # the first one, respaced: an exact duplicate after normalisation
        "a farmer has 12 cows and buys 7 more . how many cows does he have now ?",  # the seed, re-cased and spaced
        "A farmer has 12 cows and buys 8 more. How many cows does he have now?",  # one character changed
        "A baker sells 30 loaves on Monday and 45 on Tuesday. How many loaves in all?",  # a new question
    ]
    # The one-character change: the seed's key "a farmer has 12 cows and buys 7 more . how many cows does he have
    # now ?" is 71 characters, 67 5-gram positions of which 65 distinct (" cows" and "cows " occur twice); the
    # substitution replaces the 5 grams covering it: 60 shared, union 65 + 65 - 60 = 70, Jaccard 6/7 = 0.857 >= 0.8.
    assert text_filters(candidates, [seed], no_contamination()) == [
        None, "duplicate", "duplicate_of_seed", "near_duplicate_of_seed", None]


def test_a_near_duplicate_of_an_earlier_candidate_is_caught():
    q = "How many distinct ways can 6 people be seated around a round table?"
    near = "How many distinct ways can 7 people be seated around a round table?"
    # key of 68 characters: 64 5-gram positions, 62 distinct; one digit changed replaces 5 grams on each side:
    # 57 shared, union 62 + 62 - 57 = 67, Jaccard 57/67 = 0.851: a near duplicate at 0.8, not at 0.9
    assert text_filters([q, near], [], no_contamination()) == [None, "near_duplicate"]
    assert text_filters([q, near], [], no_contamination(), near_threshold=0.9) == [None, None]
    assert JaccardIndex(5).most_similar(normalize(q)) == (None, 0.0)  # an empty index holds nothing similar
    idx = JaccardIndex(5)
    idx.add(normalize(q))
    assert idx.most_similar(normalize(near)) == (0, pytest.approx(57 / 67))


# ------------------------------------------------------------------------------------------------ contamination
def test_a_planted_validation_question_is_always_caught():
    task = ArithTask()
    val = [q for q, _ in task.eval_examples("val")]
    test = [q for q, _ in task.eval_examples("test")]
    index = ContaminationIndex({"val": val, "test": test}, n=13)
    planted = val[3]  # e.g. "47+85+19=": 6 tokens, shorter than n, so it is one gram of its own
    candidates = [planted, planted.replace("+", " + "), f"Compute {planted} please", "1+2+3=", test[0]]
    # the copy; the respaced copy (same tokens; not a "duplicate": the first copy was dropped, not kept); the copy
    # inside a longer question; a question with one-digit numbers (arith's are all two-digit); a test question
    assert text_filters(candidates, [], index) == [
        "contaminated_val", "contaminated_val", "contaminated_val", None, "contaminated_test"]
    # every validation and test question, planted as a synthesized one, is caught
    assert set(text_filters(val, [], index)) == {"contaminated_val"}
    assert set(text_filters(test, [], index)) == {"contaminated_test"}


def test_long_questions_overlap_by_word_ngrams():
    index = ContaminationIndex({"test": ["The quick brown fox jumps over the lazy dog"]}, n=5)
    # shares "quick brown fox jumps" (4 tokens) only: no 5-gram in common
    assert index.match("A quick brown fox jumps high") is None
    # shares "the quick brown fox jumps" (5 tokens)
    assert index.match("the quick brown fox jumps today") == ("test", "The quick brown fox jumps over the lazy dog")
    assert index.match("fox") is None  # a fragment of a long question does not hold it


def test_a_bare_number_is_not_contamination():
    index = ContaminationIndex({"val": ["81+12+40="]}, n=13)
    assert index.match("81") is None  # a fragment: the question is not in it
    assert index.match("81+12+40=") == ("val", "81+12+40=")


# ------------------------------------------------------------------------------------------------ answerability
def test_answerability_band_from_the_models_own_vote():
    same = lambda a, b: a == b  # noqa: E731
    assert majority_vote(["5", "5", "7", None], same) == ("5", 0.5)  # 2 of 4 voters (None agrees with nobody)
    assert band_reason("5", 0.5, 0.3, 0.7) is None
    assert band_reason("5", 0.3, 0.3, 0.7) is None and band_reason("5", 0.7, 0.3, 0.7) is None  # inclusive edges
    assert band_reason("5", 0.25, 0.3, 0.7) == "below_band"  # e.g. 2 of 8 agree
    assert band_reason("5", 0.875, 0.3, 0.7) == "above_band"  # 7 of 8: near-unanimous, no GRPO advantage
    assert band_reason(None, 0.0, 0.0, 1.0) == "no_answer"  # no voter gave an answer


# ------------------------------------------------------------------------------------------------ proposer reward
def test_uncertainty_reward_hand_computed():
    # r = 1 - 2|p - 1/2|: p=1/2 -> 1; p=1/4 -> 1 - 2(1/4) = 1/2; p=3/4 -> 1/2; p=1 -> 0; p=0 -> 0; p=5/8 -> 1 - 1/4 = 3/4
    for p, r in [(0.5, 1.0), (0.25, 0.5), (0.75, 0.5), (1.0, 0.0), (0.0, 0.0), (0.625, 0.75)]:
        assert uncertainty_reward(p) == pytest.approx(r)


def test_proposer_rewards_zero_for_filtered_and_unvoted():
    shares = [0.5, 0.25, 1.0, 0.375, 0.5, None]
    passed = [True, True, True, True, False, True]
    # 0.5 -> 1; 0.25 -> 0.5; 1.0 -> 0; 0.375 -> 1 - 2(0.125) = 0.75; failed a filter -> 0; never voted -> 0
    assert proposer_rewards(shares, passed) == pytest.approx([1.0, 0.5, 0.0, 0.75, 0.0, 0.0])
    with pytest.raises(ValueError, match="2 shares but 1 pass flags"):
        proposer_rewards([0.5, 0.5], [True])


# ------------------------------------------------------------------------------------------------ config
def test_config_unknown_key_and_bad_values(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("mdoe: direct\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'mdoe' .* \(did you mean 'mode'\?\)"):
        load_synth_config(bad)
    with pytest.raises(ConfigError, match=r"mode: must be one of in_context, direct, got 'both'"):
        load_synth_config(None, ["mode=both"])
    with pytest.raises(ConfigError, match=r"in_context_template: must be a text holding \{examples\}"):
        load_synth_config(None, ["in_context_template=no placeholder"])
    with pytest.raises(ConfigError, match=r"max_majority_share: must be in \[min_majority_share, 1\]"):
        load_synth_config(None, ["min_majority_share=0.6", "max_majority_share=0.5"])
    with pytest.raises(ConfigError, match=r"question_pattern: not a valid regex"):
        load_synth_config(None, ["question_pattern=(unclosed"])
    with pytest.raises(ConfigError, match=r"num_votes: expected an integer, got 'many'"):
        load_synth_config(None, ["num_votes=many"])
    cfg = load_synth_config(None, ["temperature=0.7", "question_pattern=null", "num_shots=2"])
    assert (cfg.temperature, cfg.question_pattern, cfg.num_shots) == (0.7, None, 2)


def test_cli_bad_synth_config_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_shot: 3\n")
    proc = subprocess.run([sys.executable, "-m", "selfrl", "synth", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown config key 'num_shot'" in proc.stderr


def test_in_context_prompts_show_questions_never_answers():
    task = ArithTask()
    seeds = task.train_prompts()
    cfg = SynthConfig(num_prompts=5, num_shots=3, in_context_template="{examples};", example_separator=";")
    prompts = synthesis_prompts(cfg, seeds)
    answers = set(task.train_answers())  # read here only to prove the prompts hold none of them
    for text, shown in prompts:
        assert len(shown) == 3 and set(shown) <= set(seeds)
        assert text == ";".join(shown) + ";"
        assert not any(f"={a}" in text for a in answers)  # a question ends in "="; an answer never follows it
    assert synthesis_prompts(SynthConfig(mode="direct", num_prompts=2), seeds) == [(SynthConfig.direct_template, [])] * 2


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 with a character-level tokenizer over printable text and a chat template."""
    from selfrl.organism import OrganismSpec, build_model, build_tokenizer

    out = tmp_path_factory.mktemp("chat_model")
    tok = build_tokenizer("".join(c for c in string.printable if c not in "\r\x0b\x0c"))
    tok.chat_template = CHAT_TEMPLATE
    model = build_model(OrganismSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                        len(tok), max_positions=512)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def synth_sets(model: Path, out: Path, **extra) -> list[str]:
    sets = dict(model=str(model), output_dir=str(out), num_prompts=6, num_generations=3, num_shots=2,
                max_completion_length=12, vote_max_completion_length=6, num_votes=4, batch_size=4,
                min_majority_share=0.0, max_majority_share=1.0, progress="false", device="cpu")
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def test_chat_model_synthesizes_through_its_template_and_the_file_trains(chat_model_dir, tmp_path, monkeypatch):
    import selfrl.rollout

    seen = []
    real = selfrl.rollout.encode_prompts

    def recording(tokenizer, prompts, device):
        seen.extend(prompts)
        return real(tokenizer, prompts, device)

    monkeypatch.setattr(selfrl.rollout, "encode_prompts", recording)
    out = tmp_path / "synth"
    report = run_synth(load_synth_config(None, synth_sets(chat_model_dir, out, task=FIRST_CHAR)))  # train_answers raise
    counts = report["counts"]
    assert counts["generated"] == 18  # 6 prompts x 3 samples
    assert sum(v for k, v in counts.items() if k != "generated") == 18  # every candidate counted exactly once
    assert counts["kept"] >= 1
    assert all(p.startswith("User: Here are some example questions:\n") and p.endswith("\nAssistant:")
               for p in seen[:6])  # the 6 synthesis prompts, rendered as a user turn
    rows = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert len(rows) == counts["kept"]
    for r in rows:
        assert r["mode"] == "in_context" and r["step"] == 0 and len(r["seeds"]) == 2 and "answer" not in r
        assert 0.0 <= r["majority_share"] <= 1.0
    cands = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 18 and all(c["proposer_reward"] == 0.0 for c in cands if c["majority_share"] is None)
    voted = [c["question"] for c in cands if c["majority_share"] is not None]
    assert seen[6:] == [f"User: {q}\nAssistant:" for q in voted]  # the vote asks each question as a user turn too
    assert "| **kept** |" in (out / "report.md").read_text()
    with pytest.raises(SelfRLError, match="already holds a synthesis"):  # no lost work
        run_synth(load_synth_config(None, synth_sets(chat_model_dir, out, task=FIRST_CHAR)))

    # tier (b): the synthesized file trains 2 steps through the real CLI and changes the parameters
    from safetensors.torch import load_file

    run = tmp_path / "run"
    sets = tiny_sets(chat_model_dir, run, task=FIRST_CHAR, train_file=out / "questions.jsonl", method="srt",
                     prompts_per_step=2, gold_diagnostics="false", max_completion_length=6, eval_limit=4)
    proc = subprocess.run([sys.executable, "-m", "selfrl", "train", *[a for s in sets for a in ("--set", s)]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    before = load_file(chat_model_dir / "model.safetensors")
    after = load_file(run / "step_000002" / "policy" / "model.safetensors")
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 0


def test_direct_mode_on_the_organism(tiny_model_dir, tmp_path):
    """The character-level organism was never taught to write questions: its output is poor, and the run says so in
    its counts (or stops with one line when nothing passes) rather than failing."""
    out = tmp_path / "organism"
    sets = synth_sets(tiny_model_dir, out, task="arith", mode="direct", direct_template="12+34+56=;",
                      question_pattern=r"\d+\+\d+\+\d+=")
    try:
        counts = run_synth(load_synth_config(None, sets))["counts"]
    except SelfRLError as e:
        assert "no synthesized question passed the filters" in str(e)
        counts = json.loads((out / "report.json").read_text())["counts"]
    assert counts["generated"] == 18
    assert sum(v for k, v in counts.items() if k != "generated") == 18
    cands = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert all(c["seeds"] == [] and c["mode"] == "direct" for c in cands)
