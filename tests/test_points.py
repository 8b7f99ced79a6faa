"""GeneralPoints (issue 16): the solver, the paper's reward table case by case, the hostile-input bounds of the
formula parser, the splits, and multi-turn episodes with their loss mask (plain and through a chat template)."""
from __future__ import annotations

import json
import string
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfrl.episodes import Attempt, conversation, episode_batch, render_chat, render_plain, run_episode, token_mask
from selfrl.errors import SelfRLError, TaskError
from selfrl.organism import build_tokenizer
from selfrl.tasks.points import (
    ID_FACES, MAX_DEPTH, OOD_FACES, FormulaError, Hand, PointsTask, draw_hand, evaluate_formula, feedback,
    hand_from_question, prompt_text, score, solutions,
)

H4788 = Hand(("4", "7", "8", "8"))  # values 4, 7, 8, 8
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def ans(formula: str) -> str:
    return json.dumps({"cards": ["4", "7", "8", "8"], "number": [4, 7, 8, 8], "formula": formula})


@pytest.fixture(scope="module")
def task():
    return PointsTask()


# ------------------------------------------------------------------------------------------------------ solver
def test_solver_on_known_hands():
    sols = solutions((4, 7, 8, 8))
    assert "(4+7-8)*8" in sols and "7*8-4*8" in sols  # (11-8)*8 = 24; 56-32 = 24
    assert solutions((1, 1, 1, 1)) == ()  # at most (1+1)*(1+1) = 4
    assert solutions((3, 3, 8, 8)) == ("8/(3-8/3)",)  # the one solution, through 1/3
    assert solutions((1, 2, 3, 4)).count("1*2*3*4") == 1  # each text once


def test_every_solution_is_exact_and_uses_each_card_once():
    for values in [(4, 7, 8, 8), (1, 2, 3, 4), (3, 3, 8, 8), (10, 10, 4, 4), (13, 12, 11, 1)]:
        for s in solutions(values):
            assert evaluate_formula(s) == 24
            assert sorted(int(t) for t in s.replace("(", " ").replace(")", " ").replace("+", " ").replace(
                "-", " ").replace("*", " ").replace("/", " ").split()) == sorted(values)


def test_ood_draws_hold_a_face_card_and_are_solvable():
    import random

    rng = random.Random(0)
    for _ in range(50):
        hand = draw_hand(rng, ood=True)
        assert any(r in "JQK" for r in hand.ranks) and hand.faces == OOD_FACES
        assert solutions(tuple(sorted(hand.values)))


# -------------------------------------------------------------------------------------------------- the reward
@pytest.mark.parametrize("formula, reward, messages", [
    # +5: no penalty and exactly 24 ((4+7-8)*8 = 3*8); a trailing "=24" is cut off
    ("(4+7-8)*8", 5, ["Correct solution"]),
    ("(4+7-8)*8=24", 5, ["Correct solution"]),
    # -1: legal, all cards once, 27; "4" starts the solution 4*(7-8/8), "4+" starts none
    ("4+7+8+8", -1, ["4 is partially correct but the full formula does not match any solution"]),
    # -1: "0004" counts as card 4 but cannot be evaluated (leading zeros, as Python's eval) and starts no solution
    ("0004*7-8+8", -1, ["your formula does not match any solution"]),
    # -1: division by zero cannot be evaluated; "7" starts 7*8-4*8 but "7/" starts nothing
    ("7/(8-8)+4", -1, ["7 is partially correct but the full formula does not match any solution"]),
    # +1: unclosed, so not evaluable, and the beginning of the solution 8*(4+7-8)
    ("8*(4+7-8", 1, ["partial solution"]),
    # -2: one card unused
    ("4*7-8", -2, ["you didn't use numbers: [8]"]),
    # -2 -2: 8 three times (overused) and 4, 7 unused
    ("8+8+8", -4, ["you used numbers: [8] too many times", "you didn't use numbers: [4, 7]"]),
    # -2 -2: 9 is no card; the paper's if/elif gives no second penalty for 9 also being "overused"; 8 unused
    ("9+9+4+7", -4, ["you used invalid numbers: [9]", "you didn't use numbers: [8]"]),
    # -3 only: illegal characters stop every other check (the spaces; the cards are all used anyway)
    ("4 * 7 - 8 / 8", -3, ["illegal characters"]),
    ("4*x", -3, ["illegal characters"]),
    # -3: one bad sequence, numbers fine
    ("4++7+8+8", -3, ["invalid sequence after operator"]),
    # -3 -2: the bad sequence and the unused 8
    ("4++7+8", -5, ["invalid sequence after operator", "you didn't use numbers: [8]"]),
    # -3 -3: ')' with no '(' and '(' right after a number; numbers fine
    ("4)+7+8*8(", -6, ["unmatched closing parenthesis", "invalid sequence before '('"]),
    # -3 -2: ')' right after '('; no card used
    ("()", -5, ["invalid sequence after ')'", "you didn't use numbers: [4, 7, 8]"]),
    # -3 -3 -2: a number after ')' and '*' after '('; 7 unused
    ("(4)8*(*8)", -8, ["invalid sequence after number", "invalid sequence after operator",
                      "you didn't use numbers: [7]"]),
])
def test_reward_table(formula, reward, messages):
    assert score(H4788, ans(formula)) == (reward, messages)


def test_answer_forms():
    # the paper's re_match: JSON first, else the first "formula": "..." anywhere in the text
    assert score(H4788, 'Here: {"formula": "(4+7-8)*8"} done')[0] == 5
    assert score(H4788, "no json at all") == (-3, ["no formula found"])
    assert score(H4788, json.dumps({"formula": 24})) == (-3, ["no formula found"])  # not a string
    assert score(H4788, json.dumps({"formula": "4" * 201})) == (-3, ["the formula is longer than 200 characters"])


def test_the_rule_in_the_prompt_sets_the_face_values():
    idh, oodh = Hand(("Q", "2", "A", "A"), ID_FACES), Hand(("Q", "2", "A", "A"), OOD_FACES)
    assert idh.values == (10, 2, 1, 1) and oodh.values == (12, 2, 1, 1)
    assert score(idh, ans("(10+2)*(1+1)"))[0] == 5 and score(oodh, ans("12*2*1*1"))[0] == 5
    # the other rule's numbers: 10 is no OOD card (-2) and the 12 is unused (-2); the mirror image under ID
    assert score(oodh, ans("(10+2)*(1+1)")) == (-4, ["you used invalid numbers: [10]", "you didn't use numbers: [12]"])
    assert score(idh, ans("12*2*1*1")) == (-4, ["you used invalid numbers: [12]", "you didn't use numbers: [10]"])


def test_exact_fractions_not_floats():
    # float eval gives 23.99999999999998 for 8/(3-8/3); the paper's code scores it wrong, exact fractions do not
    assert score(Hand(("8", "3", "8", "3")), ans("8/(3-8/3)")) == (5, ["Correct solution"])


def test_feedback_is_the_papers_user_turn():
    assert feedback(["illegal characters"]) == "You failed this trial because illegal characters."
    assert feedback(["a", "b"]) == "You failed this trial because a, b."


# ------------------------------------------------------------------------------------------ hostile formulas
HOSTILE = [
    "(" * 1_000_000,  # 1 MB of nesting
    "9" * 1_000_000,  # a 1 MB literal
    "9**9**9",
    "10^10000",
    "1" + "0" * 10000,
    "1/0",
    "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
    "__import__('os').system('true')",
    "[[[[" * 250_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_formulas_are_answered_fast(text):
    t0 = time.perf_counter()
    with pytest.raises(FormulaError):
        evaluate_formula(text)
    for completion in (text, json.dumps({"formula": text}), '{"formula": "' + text + '"}'):
        reward, messages = score(H4788, completion)
        assert reward <= -1 and messages
    assert time.perf_counter() - t0 < 1.0


def test_depth_bound_is_exact():
    assert evaluate_formula("(" * MAX_DEPTH + "24" + ")" * MAX_DEPTH) == 24
    with pytest.raises(FormulaError, match="too deep"):
        evaluate_formula("(" * (MAX_DEPTH + 1) + "24" + ")" * (MAX_DEPTH + 1))


def _tree():
    leaf = st.integers(0, 13).map(lambda n: (str(n), Fraction(n)))

    def node(children):
        def make(a, op, b):
            if op == "/" and b[1] == 0:
                return a
            value = {"+": a[1] + b[1], "-": a[1] - b[1], "*": a[1] * b[1], "/": a[1] / b[1] if b[1] else 0}[op]
            return f"({a[0]}){op}({b[0]})", value
        return st.builds(make, children, st.sampled_from("+-*/"), children)

    return st.recursive(leaf, node, max_leaves=12)


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(_tree())
def test_parser_agrees_with_the_tree_it_parses(tree):
    text, value = tree  # fully parenthesised, so the value is the tree's, computed independently above
    assert evaluate_formula(text) == value


@settings(max_examples=500, deadline=1000)
@given(st.one_of(st.text(alphabet="0123456789+-*/() =.^", max_size=80), st.text(max_size=80)))
def test_parser_and_reward_never_fail_on_any_text(text):
    try:
        evaluate_formula(text)
    except FormulaError:
        pass
    reward, messages = score(H4788, json.dumps({"formula": text}))
    assert reward in (5, 1, -1) or reward <= -2
    assert all(isinstance(m, str) for m in messages) and messages


# ---------------------------------------------------------------------------------------------- task and splits
def test_splits_are_deterministic_disjoint_and_ruled(task):
    again = PointsTask()
    assert task.train_prompts() == again.train_prompts() and task.eval_examples("test_ood") == again.eval_examples(
        "test_ood")
    train_values = {tuple(sorted(h.values)) for h in task.hands("train")}
    for split in ("val", "test_id"):
        assert not train_values & {tuple(sorted(h.values)) for h in task.hands(split)}
    assert all(h.faces == ID_FACES for s in ("train", "val", "test_id") for h in task.hands(s))
    assert all(h.faces == OOD_FACES and set(h.ranks) & set("JQK") for h in task.hands("test_ood"))
    with pytest.raises(TaskError, match="not 'train'"):
        task.eval_examples("train")


def test_question_round_trip_and_prompts(task):
    q = "Cards: J, 3, A, 10. J, Q, K count as 11, 12, 13."
    hand = hand_from_question(q)
    assert hand.values == (11, 3, 1, 10) and hand.question() == q
    assert prompt_text(hand, "compact") == q + "\n"
    assert "J, Q, K count as 11, 12, 13, and each card" in task.format_prompt(q)
    with pytest.raises(TaskError, match="not a points question"):
        hand_from_question("Cards: X, 3, A, 10. J, Q, K count as 10.")


def test_extract_answer_is_equivalent_to_gold_exactly_when_the_reward_is_5(task):
    gold = H4788.gold()  # "24 using 4,7,8,8"
    for formula in ["(4+7-8)*8", "4+7+8+8", "8*(4+7-8", "4*7-8", "9+9+4+7", "4 * 7", "7/(8-8)+4", "(4)8*(*8)"]:
        answer = task.extract_answer(ans(formula))
        assert (answer is not None and task.is_equivalent(answer, gold)) == (score(H4788, ans(formula))[0] == 5)
    assert task.extract_answer(ans("4+7+8+8")) == "27 using 4,7,8,8"


def test_sft_examples_are_correct_id_answers(task):
    pairs = task.sft_examples()
    assert len(pairs) >= len(task.train_prompts())
    for q, c in pairs[:200]:
        assert "count as 10." in q and task.score(q, c) == (5, ["Correct solution"])


# ---------------------------------------------------------------------------------------------------- episodes
def test_two_turn_episode_plain():
    tok = build_tokenizer(string.printable[:100])
    first, second = ans("4+7+8+8"), ans("(4+7-8)*8")  # -1, then +5: the episode stops after two attempts
    replies, prompts = iter([first, second, ans("never asked")]), []
    ep = run_episode(lambda p: prompts.append(p) or next(replies), H4788, 5, tokenizer=tok)
    verifier = "You failed this trial because 4 is partially correct but the full formula does not match any solution."
    assert prompts[0] == "Cards: 4, 7, 8, 8. J, Q, K count as 10.\n"
    assert prompts[1] == prompts[0] + first + "<eos>" + verifier + "\n"  # the whole history and the verifier
    assert [a.reward for a in ep.attempts] == [-1, 5] and ep.total_reward == 4 and ep.solved
    assert ep.text == prompts[1] + second + "<eos>"
    # one token per character, except "<eos>" (one token): the mask keeps exactly the two attempts and their EOS
    own = [i for i, m in zip(ep.input_ids, ep.loss_mask) if m]
    assert tok.decode(own) == first + "<eos>" + second + "<eos>"
    assert sum(ep.loss_mask) == len(first) + 1 + len(second) + 1
    assert tok.decode([i for i, m in zip(ep.input_ids, ep.loss_mask) if not m]) == prompts[0] + verifier + "\n"


def test_episode_ends_at_max_turns_and_batches():
    tok = build_tokenizer(string.printable[:100])
    ep = run_episode(lambda p: "no answer", H4788, 3, tokenizer=tok)
    assert [a.reward for a in ep.attempts] == [-3, -3, -3] and ep.total_reward == -9 and not ep.solved
    assert ep.text.count("You failed this trial because no formula found.") == 2  # not after the last attempt
    b = episode_batch([ep, run_episode(lambda p: ans("(4+7-8)*8"), H4788, 3, tokenizer=tok)], tok.pad_token_id)
    assert b["input_ids"].shape == b["loss_mask"].shape == (2, len(ep.input_ids))
    assert b["rewards"].tolist() == [-9.0, 5.0] and b["loss_mask"][0].sum() == 3 * (len("no answer") + 1)
    with pytest.raises(SelfRLError, match="max_turns"):
        run_episode(lambda p: "", H4788, 0, tokenizer=tok)


def chat_tokenizer():
    """A character-level tokenizer with ChatML's role markers as special tokens and a ChatML template."""
    tok = build_tokenizer(string.printable[:100])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    return tok


def test_two_turn_episode_through_a_chat_template():
    tok = chat_tokenizer()
    attempts = [Attempt(ans("4+7+8+8"), -1, ["x is wrong"]), Attempt(ans("(4+7-8)*8"), 5, ["Correct solution"])]
    msgs = conversation("PROMPT", attempts)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    text, spans = render_chat(tok, msgs)
    assert text == ("<|im_start|>user\nPROMPT<|im_end|>\n<|im_start|>assistant\n" + attempts[0].completion
                    + "<|im_end|>\n<|im_start|>user\nYou failed this trial because x is wrong.<|im_end|>\n"
                    "<|im_start|>assistant\n" + attempts[1].completion + "<|im_end|>\n")
    ids, mask = token_mask(tok, text, spans)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "".join(a.completion + "<|im_end|>" for a in attempts)
    assert "failed" not in tok.decode([i for i, m in zip(ids, mask) if m])
    plain, _ = render_plain(msgs[:3], "<eos>")  # a user turn last: the text stops where the next attempt starts
    assert plain.endswith("You failed this trial because x is wrong.\n")


def test_a_template_that_rewrites_history_is_refused():
    tok = chat_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if loop.last or m['role'] == 'user' %}{{ m['content'] }}"
                         "{% endif %}{% endfor %}")  # drops earlier assistant turns
    attempts = [Attempt("A", -3, ["no formula found"]), Attempt("B", -3, ["no formula found"])]
    with pytest.raises(SelfRLError, match="concatenation of its turns"):
        render_chat(tok, conversation("P", attempts)[:-1])


def test_tiny_chat_model_plays_an_episode_through_its_template(task):
    """A random tiny Qwen2 with the ChatML tokenizer: the environment's full prompt goes through the template, two
    sampled attempts fail (random text), and the mask covers the sampled text only."""
    import torch

    from selfrl.organism import OrganismSpec, build_model
    from selfrl.tasks import ChatTemplateTask

    tok = chat_tokenizer()
    model = build_model(OrganismSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2), len(tok), max_positions=2048)
    model.generation_config.eos_token_id = tok.eos_token_id
    q = task.train_prompts()[0]
    rendered = ChatTemplateTask(task, tok).format_prompt(q)
    assert rendered.startswith("<|im_start|>user\nYou are an expert") and rendered.endswith("<|im_start|>assistant\n")

    def generate(prompt):
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        torch.manual_seed(0)
        out = model.generate(ids, max_new_tokens=12, do_sample=True, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    ep = run_episode(generate, hand_from_question(q), 2, tokenizer=tok, chat=True)
    assert len(ep.attempts) == 2 and not ep.solved
    assert ep.text.startswith(rendered) and "You failed this trial because" in ep.text
    assert tok.decode([i for i, m in zip(ep.input_ids, ep.loss_mask) if m]) == "".join(
        a.completion + "<|im_end|>" for a in ep.attempts)


# ------------------------------------------------------------------------------------------------- the warm-up
def test_warmup_reads_stated_rules_but_never_the_ood_one(task):
    from selfrl.points_organism import HOLDOUT_HANDS, warmup_pairs

    pairs = warmup_pairs(task, 2000, 0.5, seed=0)
    hands = [hand_from_question(p.strip()) for p, _ in pairs]
    assert all(max(h.faces) <= 10 for h in hands)  # no face is ever 11, 12 or 13
    assert not any(set(h.values) & {11, 12, 13} for h in hands)
    id_share = sum(h.faces == ID_FACES for h in hands) / len(hands)
    assert 0.45 < id_share < 0.55  # drawn with p = 0.5 (sd 0.011); a stated rule is never 10, 10, 10 (v <= 9)
    assert len({h.faces for h in hands}) > 50  # many stated rules: single values 1-9 and distinct triples
    held = {tuple(sorted(h.values)) for s in ("val", "test_id") for h in task.hands(s)}
    holdout = {h.ranks for h in task.hands("train")[-HOLDOUT_HANDS:]}
    for (p, c), h in zip(pairs, hands):
        assert p == h.question() + "\n" and score(h, c) == (5, ["Correct solution"])
        assert tuple(sorted(h.values)) not in held
        assert h.ranks not in holdout  # the stopping test's hands are never trained on


def test_saved_organism_tokenizer_keeps_spaces_and_newlines(tmp_path):
    from selfrl.organism import OrganismSpec, build_model
    from selfrl.points_organism import CHARS, load_points_organism

    tok = build_tokenizer(CHARS)
    build_model(OrganismSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded = load_points_organism(tmp_path)
    text = 'Cards: J, 3.\n{"cards": ["J"]}'
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and loaded.decode(ids) == text  # one token per character, spaces included
