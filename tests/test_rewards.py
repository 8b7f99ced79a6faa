"""selfrl.rewards: TRL-style reward callables, checked by hand on tiny groups (TRL itself is not needed)."""
from __future__ import annotations

import pytest
import torch

from selfrl import core
from selfrl.errors import ConfigError, TaskError
from selfrl.rewards import MajorityVoteReward, PooledVoteReward, SelfCertaintyReward, completion_text, prompt_groups
from selfrl.tasks import load_task

# Two prompts interleaved, as a shuffled TRL batch may hold them: A at rows 0, 2, 4 and B at rows 1, 3.
PROMPTS = ["A=", "B=", "A=", "B=", "A="]
# arith's answer is the final "=<integer>". A's answers 3, 4, 3 -> majority 3; B's answers 7, 8 tie -> first seen, 7.
COMPLETIONS = ["1+2=3", "5+2=7", "2+2=4", "4+4=8", "0+3=3"]
EXPECTED = [1.0, 1.0, 0.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def arith():
    return load_task("arith")


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_majority_vote_by_hand(arith):
    reward = MajorityVoteReward(arith)
    assert reward.__name__ == "majority_vote"  # TRL logs rewards/<__name__>
    assert prompt_groups(PROMPTS) == [[0, 2, 4], [1, 3]]
    assert reward(PROMPTS, COMPLETIONS) == EXPECTED


def test_conversational_prompts_and_completions(arith):
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    assert MajorityVoteReward(arith)(prompts, [chat(c) for c in COMPLETIONS]) == EXPECTED
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": c}]}] for c in COMPLETIONS]
    assert MajorityVoteReward(arith)(PROMPTS, parts) == EXPECTED
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b=1"}]) == "a\nb=1"
    with pytest.raises(TaskError, match="a completion must be a string or a list of messages, got int"):
        completion_text(3)


def test_no_answer_and_no_majority(arith):
    # group A: "junk" has no answer, "=5" votes 5 alone -> label 5, share 1/2: rewards 0, 1.
    # group B: no answer at all -> no label -> every reward 0.
    assert MajorityVoteReward(arith)(["A", "A", "B", "B"], ["junk", "=5", "no", "none"]) == [0.0, 1.0, 0.0, 0.0]


def test_gold_columns_never_reach_the_reward(arith):
    """TRL forwards every dataset column; poisoned gold answers (which would flip every reward) change nothing."""
    poison = dict(answer=["4", "8", "4", "8", "4"], solution=["\\boxed{4}"] * 5, gold=["8"] * 5)
    assert MajorityVoteReward(arith)(PROMPTS, COMPLETIONS, **poison) == EXPECTED
    assert PooledVoteReward(arith)(PROMPTS, COMPLETIONS, **poison) == EXPECTED


def test_pooled_vote_extra_voters_vote_but_get_no_reward(arith):
    prompts, completions = ["A", "A", "B", "B"], ["=3", "=4", "=7", "=8"]
    # alone: A ties 3 vs 4 -> 3 (first seen); B ties 7 vs 8 -> 7: rewards 1, 0, 1, 0
    assert PooledVoteReward(arith)(prompts, completions) == [1.0, 0.0, 1.0, 0.0]
    # A pooled with voters 4, 4: 3 once, 4 three times -> label 4; B pooled with one 8: 7 once, 8 twice -> label 8
    voters = [["=4", "=4"], ["=4", "=4"], ["=8"], ["=8"]]
    assert PooledVoteReward(arith)(prompts, completions, voter_completions=voters) == [0.0, 1.0, 0.0, 1.0]
    # four rewards for four completions: the voters' own rows get none
    with pytest.raises(TaskError, match="rows 0 and the others of the same prompt carry different voters"):
        PooledVoteReward(arith)(prompts, completions, voter_completions=[["=4"], ["=3"], [], []])
    with pytest.raises(TaskError, match="voter_completions: 1 rows for 4 prompts"):
        PooledVoteReward(arith)(prompts, completions, voter_completions=[["=4"]])


def test_pooled_vote_ties_go_to_the_voters_when_asked(arith):
    # A: completions 3, 3, voters 4, 4 (2-2); B: completions 7, 8, voter 8 (8 wins outright)
    prompts, completions = ["A", "A", "B", "B"], ["=3", "=3", "=7", "=8"]
    voters = [["=4", "=4"], ["=4", "=4"], ["=8"], ["=8"]]
    # default: the pool reads the completions first, so A's tie goes to 3
    assert PooledVoteReward(arith)(prompts, completions, voter_completions=voters) == [1.0, 1.0, 0.0, 1.0]
    # vote_ties="momentum": A's tie goes to the voters' 4; B's outright majority is unchanged
    ties = PooledVoteReward(arith, vote_ties="momentum")
    assert ties(prompts, completions, voter_completions=voters) == [0.0, 0.0, 0.0, 1.0]
    # without voters there is nobody to give a tie to: the completions' own first class, as MajorityVoteReward
    assert ties(["A", "A"], ["=3", "=4"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="vote_ties: expected 'policy' or 'momentum', got 'teacher'"):
        PooledVoteReward(arith, vote_ties="teacher")


def test_equivalence_is_the_tasks(tmp_path):
    """math's math-verify equivalence: 1/2, 0.5 and \\frac{1}{2} are one answer and outvote 2 and 3."""
    math_task = load_task("math")
    completions = ["\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{2}", "\\boxed{1/2}", "\\boxed{3}"]
    assert MajorityVoteReward(math_task)(["q"] * 5, completions) == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_mismatched_lengths_are_one_line(arith):
    with pytest.raises(TaskError, match="2 prompts but 1 completions"):
        MajorityVoteReward(arith)(["A", "A"], ["=1"])


# ------------------------------------------------------------------------------------------------- self-certainty
def reference_certainty(model, tok, prompt: str, completion_ids: list[int], temperature: float) -> float:
    """The definition, without any of score()'s savings: one plain forward pass over prompt + completion; the logits
    at positions P-1 .. P+T-2 predict the T completion tokens; mean of KL(U || softmax(z / temperature)) over them."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(p) - 1 : len(p) + len(completion_ids) - 1] / temperature
    return core.self_certainty(logits).mean().item()


def test_self_certainty_matches_the_definition(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    prompts = ["12+34+56=", "7+8+9=", "12+34+56=", "7+8+9="]  # two groups of two, interleaved, prompts of two lengths
    completions = ["46+56=102", "15+9=24", "1", "15+9=2"]
    reward = SelfCertaintyReward(model, tok, temperature=0.7, batch_size=3)  # 3: each group whole, two chunks
    got = reward(prompts, completions, answer=["0"] * 4)
    want = [reference_certainty(model, tok, p, tok(c, add_special_tokens=False)["input_ids"], 0.7)
            for p, c in zip(prompts, completions)]
    assert got == pytest.approx(want, abs=1e-5)
    assert min(got) > 0  # KL(U || p) >= 0, and 0 only for a uniform p, which a trained model is not
    assert model.training  # the caller's mode is restored
    # completion_ids (TRL passes the sampled tokens, EOS included) are scored as given
    ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions]
    got_ids = reward(prompts, completions, completion_ids=ids)
    want_ids = [reference_certainty(model, tok, p, c, 0.7) for p, c in zip(prompts, ids)]
    assert got_ids == pytest.approx(want_ids, abs=1e-5) and got_ids != pytest.approx(got, abs=1e-5)


def test_self_certainty_renders_conversational_prompts(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}#{{ m['content'] }};{% endfor %}{% if add_generation_prompt %}={% endif %}"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    got = SelfCertaintyReward(model, tok)([[{"role": "user", "content": "1+2+3"}]], [chat("6")])
    assert got == pytest.approx([reference_certainty(model, tok, "#1+2+3;=", tok("6")["input_ids"], 1.0)], abs=1e-5)
