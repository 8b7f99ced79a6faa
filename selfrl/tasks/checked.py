"""A task's methods with what they return checked and what they raise made one line (issue 21).

A user task is code the trainer calls deep inside the loop: a `train_prompts` that raises, an `eval_examples` of
3-tuples or an `extract_answer` that returns an int would otherwise surface as a traceback from the vote, the
tokenizer or the evaluator, far from the method at fault. `check_task` wraps a task so that

  * an exception inside one of its methods becomes `TaskError("task method NAME raised TYPE: MESSAGE")` (the original
    is kept as the cause); a SelfRLError the task raises itself (e.g. a task without gold answers) passes unchanged;
  * each return value is checked against the interface of selfrl/tasks/__init__.py, and a wrong one is a TaskError
    naming the method, the offending item and its type.

The checks are isinstance tests: per call for the per-rollout methods (extract_answer, is_equivalent,
format_prompt), which costs nanoseconds beside the rollout itself, and over every item for the list methods, which
run once per setup or evaluation. A well-formed task's results pass through unchanged (tests/test_task_checks.py
compares the built-in tasks with and without the wrapper).
"""
from __future__ import annotations

from selfrl.errors import SelfRLError, TaskError


def _cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters for a one-line message (a user's value may be megabytes)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value) -> str:
    return _cut(repr(value), 60)


def _kind(value) -> str:
    return type(value).__name__


class CheckedTask:
    """`task` with every interface method checked (see the module docstring); `name` is the task's."""

    def __init__(self, task):
        self.task = task
        self.name = getattr(task, "name", "task")

    def __getattr__(self, name):
        # Methods beyond the checked interface (a task's optional sft_examples, a verifier's score, ...) pass through;
        # `task` itself is looked up normally, so this never recurses.
        if name == "task":
            raise AttributeError(name)
        return getattr(self.task, name)

    def _call(self, method: str, *args):
        try:
            return getattr(self.task, method)(*args)
        except SelfRLError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure inside user code is reported as one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else "(no message)"
            raise TaskError(f"task method {method} raised {_kind(e)}: {_cut(first, 200)}") from e

    def format_prompt(self, question: str) -> str:
        out = self._call("format_prompt", question)
        if not isinstance(out, str):
            raise TaskError(f"task method format_prompt returned {_kind(out)} {_show(out)}, expected a string")
        return out

    def extract_answer(self, completion: str) -> str | None:
        out = self._call("extract_answer", completion)
        if out is not None and not isinstance(out, str):
            raise TaskError(f"task method extract_answer returned {_kind(out)} {_show(out)}, expected a string or None "
                            "(answers are compared as text)")
        return out

    def is_equivalent(self, a: str, b: str) -> bool:
        out = self._call("is_equivalent", a, b)
        if not isinstance(out, bool):
            raise TaskError(f"task method is_equivalent returned {_kind(out)} {_show(out)}, expected True or False")
        return out

    def train_prompts(self) -> list[str]:
        return _strings("train_prompts", self._call("train_prompts"))

    def train_answers(self) -> list[str]:
        return _strings("train_answers", self._call("train_answers"))

    def eval_examples(self, split: str) -> list[tuple[str, str]]:
        out = self._call("eval_examples", split)
        method = f"eval_examples({split!r})"
        if not isinstance(out, (list, tuple)):
            raise TaskError(f"task method {method} returned {_kind(out)}, expected a list of (question, answer) pairs")
        for i, ex in enumerate(out):
            if not (isinstance(ex, (list, tuple)) and len(ex) == 2 and all(isinstance(x, str) for x in ex)):
                raise TaskError(f"task method {method} returned item {i} = {_show(ex)} ({_kind(ex)}), expected a "
                                "(question, answer) pair of strings")
        return out


def _strings(method: str, out) -> list[str]:
    if not isinstance(out, (list, tuple)):
        raise TaskError(f"task method {method} returned {_kind(out)}, expected a list of strings")
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise TaskError(f"task method {method} returned item {i} = {_show(x)} ({_kind(x)}), expected a string")
    return out


def check_task(task) -> CheckedTask:
    """`task` wrapped in its checks; a task already wrapped is returned as it is."""
    return task if isinstance(task, CheckedTask) else CheckedTask(task)


def check_encodable(tokenizer, texts: list[str], what: str) -> None:
    """A TaskError naming the first characters of `texts` the tokenizer cannot encode, with an example text.

    A tokenizer with an unknown token maps what it lacks to it, and decoding drops it: the character-level organism
    trains on `twelve plus five=` as `=` without a word. A text is unencodable when its tokens hold the unknown
    token, or (a tokenizer without one) when decoding its tokens does not give the text back, whitespace aside
    (SentencePiece tokenizers legitimately move a leading space). `what` names the texts in the message
    ("train_prompts", "eval_examples('val')", a file)."""
    texts = list(texts)
    if not texts:
        return
    unk = tokenizer.unk_token_id
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # Both tests, whatever the tokenizer: a pre-tokenizer can also drop what it cannot place without emitting the
    # unknown token (a character-level tokenizer read back as a byte-level one turns `twelve plus five=` into `=`).
    # special tokens kept: a chat template's own markers (<|im_start|>) must decode back to themselves
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    bad = [i for i, (t, d, row) in enumerate(zip(texts, decoded, ids))
           if (unk is not None and unk in row) or "".join(t.split()) != "".join(d.split())]
    missing = _unknown_chars(tokenizer, [texts[i] for i in bad], unk) if unk is not None else []
    missing += [c for i in bad for c in dict.fromkeys(texts[i]) if c not in decoded[i] and not c.isspace()]
    if not bad:
        return
    chars = ", ".join(repr(c) for c in list(dict.fromkeys(missing))[:8]) or "characters that do not decode back"
    more = f" (and {len(set(missing)) - 8} more)" if len(set(missing)) > 8 else ""
    raise TaskError(f"{what}: {len(bad)} of {len(texts)} texts hold characters the tokenizer cannot encode: "
                    f"{chars}{more}; e.g. {_cut(repr(texts[bad[0]]), 80)}. They would be dropped from what the model "
                    "sees: use a model whose tokenizer covers them, or texts without them")


def _unknown_chars(tokenizer, texts: list[str], unk: int) -> list[str]:
    """The distinct characters of `texts` that the tokenizer encodes, on their own, as the unknown token."""
    chars = list(dict.fromkeys(c for t in texts for c in t))
    ids = tokenizer(chars, add_special_tokens=False)["input_ids"] if chars else []
    return [c for c, row in zip(chars, ids) if unk in row]
