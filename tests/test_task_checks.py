"""A user task's methods are checked where they are called (selfrl/tasks/checked.py, issue 21): an exception inside
one is one TaskError line naming the method, a return value of the wrong type is one line naming the method, the
item and its type, and the built-in tasks give the same results wrapped as bare."""
from __future__ import annotations

import re

import pytest

from selfrl.cli import main
from selfrl.errors import TaskError
from selfrl.tasks import Task, load_task
from selfrl.tasks.arith import ArithTask
from selfrl.tasks.checked import CheckedTask, check_task
from selfrl.tasks.math import MathTask

GOOD = {  # a working task's methods; each case below replaces one
    "format_prompt": "def format_prompt(self, q):\n        return q",
    "extract_answer": "def extract_answer(self, c):\n        return c.rsplit('=', 1)[-1] if '=' in c else None",
    "is_equivalent": "def is_equivalent(self, a, b):\n        return a == b",
    "train_prompts": "def train_prompts(self):\n        return ['1+1=', '2+2=']",
    "eval_examples": "def eval_examples(self, split):\n        return [('1+1=', '2'), ('2+2=', '4')]",
}


def user_task(tmp_path, **bodies) -> str:
    """The spec of a task file whose methods are GOOD's with `bodies` in place of some."""
    methods = "\n\n    ".join({**GOOD, **bodies}.values())
    path = tmp_path / "user_task.py"
    path.write_text(f"class T:\n    {methods}\n")
    return f"{path}:T"


CASES = [  # (replaced method, its body, the call, the one-line message)
    ("train_prompts", "def train_prompts(self):\n        raise ValueError('row 3 has no question')",
     lambda t: t.train_prompts(), "task method train_prompts raised ValueError: row 3 has no question"),
    ("train_prompts", "def train_prompts(self):\n        return ['1+1=', 5]",
     lambda t: t.train_prompts(), "task method train_prompts returned item 1 = 5 (int), expected a string"),
    ("train_prompts", "def train_prompts(self):\n        return (q for q in ['1+1='])",
     lambda t: t.train_prompts(), "task method train_prompts returned generator, expected a list of strings"),
    ("eval_examples", "def eval_examples(self, split):\n        return [('1+1=', '2', 'two')]",
     lambda t: t.eval_examples("val"),
     "task method eval_examples('val') returned item 0 = ('1+1=', '2', 'two') (tuple), expected a (question, answer) "
     "pair of strings"),
    ("eval_examples", "def eval_examples(self, split):\n        return [('1+1=', 2)]",
     lambda t: t.eval_examples("test"), "returned item 0 = ('1+1=', 2) (tuple), expected a (question, answer) pair"),
    ("eval_examples", "def eval_examples(self, split):\n        return {'val': []}[split]",
     lambda t: t.eval_examples("test"), "task method eval_examples raised KeyError: 'test'"),
    ("extract_answer", "def extract_answer(self, c):\n        return 42",
     lambda t: t.extract_answer("1+1=2"), "task method extract_answer returned int 42, expected a string or None"),
    ("extract_answer", "def extract_answer(self, c):\n        return int(c)",
     lambda t: t.extract_answer("1+1=2"),
     "task method extract_answer raised ValueError: invalid literal for int() with base 10: '1+1=2'"),
    ("is_equivalent", "def is_equivalent(self, a, b):\n        return 1",
     lambda t: t.is_equivalent("2", "2"), "task method is_equivalent returned int 1, expected True or False"),
    ("format_prompt", "def format_prompt(self, q):\n        return None",
     lambda t: t.format_prompt("1+1="), "task method format_prompt returned NoneType None, expected a string"),
    ("format_prompt", "def format_prompt(self, q):\n        raise RuntimeError('x' * 10000)",
     lambda t: t.format_prompt("1+1="), "task method format_prompt raised RuntimeError: " + "x" * 197 + "..."),
]


@pytest.mark.parametrize("method,body,call,message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_bad_method_is_one_line_naming_it(tmp_path, method, body, call, message):
    task = load_task(user_task(tmp_path, **{method: body}))
    with pytest.raises(TaskError) as e:
        call(task)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_original_exception_is_kept_as_the_cause(tmp_path):
    task = load_task(user_task(tmp_path, train_prompts="def train_prompts(self):\n        return 1 / 0"))
    with pytest.raises(TaskError) as e:
        task.train_prompts()
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_a_tasks_own_errors_pass_unchanged():
    class NoGold(ArithTask):
        train_answers = Task.train_answers  # raises TaskError("task 'arith' has no gold training answers ...")

    with pytest.raises(TaskError, match=r"^task 'arith' has no gold training answers"):
        check_task(NoGold()).train_answers()


@pytest.mark.parametrize("make", [ArithTask, MathTask], ids=["arith", "math"])
def test_built_in_tasks_give_the_same_results_wrapped(make):
    bare, wrapped = make(), load_task(make().name)
    assert isinstance(wrapped, CheckedTask) and wrapped.name == bare.name
    assert wrapped.train_prompts() == bare.train_prompts() and wrapped.train_answers() == bare.train_answers()
    for split in ("val", "test"):
        assert wrapped.eval_examples(split) == bare.eval_examples(split)
    q, gold = bare.eval_examples("val")[0]
    assert wrapped.format_prompt(q) == bare.format_prompt(q)
    for completion in ("", "no answer", "12+34=46", "\\boxed{46}", "=46", "x" * 5000):
        assert wrapped.extract_answer(completion) == bare.extract_answer(completion)
    for a, b in ((gold, gold), (gold, "-1"), ("46", "46.0")):
        assert wrapped.is_equivalent(a, b) is bare.is_equivalent(a, b)
    assert check_task(wrapped) is wrapped  # wrapping twice is wrapping once


def test_the_command_line_shows_one_line(tmp_path, tiny_model_dir, capsys):
    spec = user_task(tmp_path, eval_examples="def eval_examples(self, split):\n        return [('1+1=', '2', 'x')]")
    assert main(["eval", str(tiny_model_dir), "--task", spec, "--split", "val"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert re.fullmatch(r"selfrl: error: task method eval_examples\('val'\) returned item 0 = .*", err)
