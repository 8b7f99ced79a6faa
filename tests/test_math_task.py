"""The built-in `math` task on ordinary completions: last-\\boxed{} extraction, math-verify equivalence, shipped data."""
import pytest

from selfrl.errors import TaskError
from selfrl.tasks import load_task
from selfrl.tasks.math import MathTask


@pytest.fixture(scope="module")
def task():
    return load_task("math")


@pytest.mark.parametrize("completion, answer", [
    ("The sum is 42, so $\\boxed{42}$.", "42"),
    ("Hence $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),  # nested braces inside the box
    ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}"),  # two levels
    ("First \\boxed{3}, on second thought \\boxed{4}.", "4"),  # the last box wins
    ("\\fbox{7}", "7"),
    ("\\boxed{1} and \\fbox{2}", "2"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces don't count
    ("\\boxed{ (1, 4] }", "(1, 4]"),  # surrounding spaces go
    ("\\boxed{1\n+\t2}", "1 + 2"),  # line breaks and tabs read as spaces
])
def test_extract_answer(task, completion, answer):
    assert task.extract_answer(completion) == answer


@pytest.mark.parametrize("completion", [
    "The answer is 42.",  # no box
    "\\boxed{42",  # truncated: unbalanced
    "\\boxed{3} then \\boxed{\\frac{1}{2}",  # the LAST box is cut off: no answer, not the earlier one
    "\\boxed{}",  # empty
    "\\boxed{ \u200b }",  # only invisible characters
    "\\boxed{" + "1" * 1001 + "}",  # longer than MAX_ANSWER_CHARS
])
def test_no_answer(task, completion):
    assert task.extract_answer(completion) is None


def test_answer_at_the_length_cap_is_kept(task):
    assert task.extract_answer("\\boxed{" + "1" * 1000 + "}") == "1" * 1000


@pytest.mark.parametrize("a, b", [
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("1/2", "\\frac{1}{2}"),
    ("\\dfrac{1}{2}", "\\frac12"),
    ("2", "2.0"),
    ("2.0", "2"),
    ("\\sqrt{2}", "2^{1/2}"),
    ("5\\sqrt{2}", "\\sqrt{50}"),
    ("(1,4]", "(1, 4]"),
    ("[3,\\infty)", "[3, \\infty)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("42", "42"),
])
def test_equivalent(task, a, b):
    assert task.is_equivalent(a, b) is True


@pytest.mark.parametrize("a, b", [
    ("3", "4"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("0.5", "0.51"),
    ("(1,4]", "[1,4]"),  # open vs closed end
    ("\\sqrt{2}", "2"),
    ("x", "y"),
    ("", ""),  # no answer is never an answer
    ("42", " "),
])
def test_not_equivalent(task, a, b):
    assert task.is_equivalent(a, b) is False


def test_sample_loads_with_disjoint_splits(task):
    train, val, test = task.train_prompts(), task.eval_examples("val"), task.eval_examples("test")
    assert len(train) >= 20 and len(val) >= 5 and len(test) >= 5
    assert len(task.train_answers()) == len(train)
    questions = train + [q for q, _ in val + test]
    assert len(set(questions)) == len(questions)
    with pytest.raises(TaskError, match="labelled splits"):
        task.eval_examples("train")


def test_gold_answers_parse_and_match_themselves_through_sympy(task):
    # Every shipped answer passes the screen and math-verify parses it, so the oracle compares values, not strings.
    from selfrl.tasks.math import _parse, _screen

    golds = task.train_answers() + [a for _, a in task.eval_examples("val") + task.eval_examples("test")]
    for gold in golds:
        assert _screen(gold), gold
        parsed = _parse(gold)
        assert parsed and not isinstance(parsed[0], str), gold
        assert task.is_equivalent(gold + " ", gold)


def test_oracle_style_reward_from_a_boxed_completion(task):
    q, gold = task.train_prompts()[1], task.train_answers()[1]
    assert "\\boxed{}" in task.format_prompt(q)
    assert task.is_equivalent(task.extract_answer("3/4 - 1/4 = 2/4, so $\\boxed{0.5}$"), gold)


def test_bad_split_is_a_task_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"prompt": "1+1?", "answer": "2", "split": "dev"}\n')
    with pytest.raises(TaskError, match="line 1"):
        MathTask(path)
