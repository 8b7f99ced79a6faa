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
from selfrl.tasks.checked import CheckedTask, check_encodable, check_task
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


def _bpe(byte_level: bool):
    """A tiny BPE tokenizer without an unknown token, trained on arithmetic: byte-level (covers every text) or on
    characters (silently drops a character it never saw, as tokenizers' BPE does without unk_token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    if byte_level:
        tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tk.pre_tokenizer, tk.decoder = pre_tokenizers.Split("", "isolated"), decoders.Fuse()
        alphabet = list("0123456789+= ")
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet, special_tokens=["<eos>"])
    tk.train_from_iterator(["12+34=46", "7+8=15 "] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def test_the_organism_cannot_encode_letters():
    # The organism's characters are 0-9 + - * = , ; # and space. "twelve plus five=" holds 10 other characters, in
    # order of first appearance t w e l v p u s f i: the first 8 are named and 2 more counted.
    from selfrl.organism import build_tokenizer

    tok = build_tokenizer()
    check_encodable(tok, ["12+34=", "1, 2; 3 # 4-5*6="], "train_prompts")  # every character known: no error
    with pytest.raises(TaskError) as e:
        check_encodable(tok, ["12+34=", "twelve plus five=", "9+9="], "train_prompts")
    assert str(e.value) == (
        "train_prompts: 1 of 3 texts hold characters the tokenizer cannot encode: 't', 'w', 'e', 'l', 'v', 'p', 'u', "
        "'s' (and 2 more); e.g. 'twelve plus five='. They would be dropped from what the model sees: use a model whose "
        "tokenizer covers them, or texts without them")


def test_a_tokenizer_without_unk_is_checked_by_round_trip():
    drops = _bpe(byte_level=False)
    assert drops.decode(drops("twelve=", add_special_tokens=False)["input_ids"]) == "="  # the silent loss itself
    with pytest.raises(TaskError, match=r"^eval_examples\('val'\): 1 of 2 texts .*: 't', 'w', 'e', 'l', 'v'; e.g. 'twelve='"):
        check_encodable(drops, ["1+2=", "twelve="], "eval_examples('val')")
    # a byte-level tokenizer encodes any text, so nothing is reported (no false alarm on accents, CJK, emoji)
    texts = ["1+2=", "douze + cinq = 17 é 十二 🙂", "  leading spaces"]
    check_encodable(_bpe(byte_level=True), texts, "train_prompts")
