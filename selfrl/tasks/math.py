"""Built-in task `math`: free-form problems answered in `\\boxed{}`, compared with the math-verify library.

    question:   "What is $\\frac{3}{4} - \\frac{1}{4}$?"
    completion: "... so the result is $\\boxed{\\frac{1}{2}}$."   (the answer is the content of the LAST \\boxed{})

Equivalence is math-verify's (`parse` + `verify`, HuggingFace), not hand-written: "0.5", "1/2" and "\\frac{1}{2}"
are one answer; "2" and "2.0" too. The data are a small shipped sample (`math_sample.jsonl`, split field
"train" / "val" / "test") for tests and demos; real runs bring their own prompts with `train_file`.

Model output is hostile input (issue 6, item 4): a verifier that hangs or raises kills a long training run, and
sympy, behind math-verify, will happily try to compute 9^(9^9). So:

* Extraction is a linear scan with a depth counter from the last `\\boxed{` / `\\fbox{`, stopping after
  MAX_ANSWER_CHARS: no regex that can backtrack, O(MAX_ANSWER_CHARS) on a 1 MB completion.
* Control and format characters (NUL, zero-width joiners, RTL overrides, lone surrogates) are removed from the
  extracted answer, so votes and logs never carry invisible differences.
* Only a short, printable-ASCII, balanced, shallow answer without power towers, huge exponents or huge factorials
  (`_screen`) ever reaches sympy; every other answer is compared as an exact string. The reasons are measured on
  math-verify 0.9.0 / sympy 1.14 and sit next to each check.
* Nothing evaluates model text: we use only math-verify's LaTeX extractor (its plain-expression extractor runs
  sympy's `parse_expr`, i.e. `eval`); the LaTeX path `eval`s only number tokens of its own lexer
  (`sympy.Number("12")`), and the screen keeps them ASCII digits.
* A sub-second SIGALRM backstop (`_bounded`) bounds what the screen lets through. It measures wall time, which a
  busy machine stretches, so a parse that overruns it is tried once more and only two overruns make an answer
  unparseable for good. math-verify's own timeouts are turned off: they use `signal.alarm`, whole seconds only,
  cancel any outer alarm (pytest-timeout's, a user's) without restoring it, and raise ValueError outside the main
  thread. Ours restores the outer timer; outside the main thread (and on Windows) the screen alone bounds the cost.
"""
from __future__ import annotations

import functools
import logging
import re
import signal
import threading
import time
import unicodedata
from pathlib import Path

from math_verify import LatexExtractionConfig, parse, verify

from selfrl.data import read_jsonl
from selfrl.errors import TaskError
from selfrl.tasks import SplitTask

SAMPLE = Path(__file__).with_name("math_sample.jsonl")
MAX_ANSWER_CHARS = 1000  # longer boxed content is no answer: a real final answer is a few dozen characters
MAX_PARSE_CHARS = 256  # antlr parse time grows with length (~0.4 s at 1000 chars); longer answers: exact string only
MAX_DEPTH = 6  # antlr's prediction costs ~0.05 s per level of ( [ { nesting, 1 s at depth 10
MAX_EXPONENT_DIGITS = 4  # verify(9^{999999999}, 1) runs for seconds in sympy's numeric comparison
MAX_FACTORIAL_DIGITS = 3  # 100000! costs 0.15 s and grows super-linearly; 999! is instant
PARSE_SECONDS = 0.2  # backstop per parse; a typical answer parses in 1-40 ms
VERIFY_SECONDS = 0.3  # backstop per verify; two parses + one verify stay under 1 s
_BOXES = ("\\boxed{", "\\fbox{")
_LATEX_ONLY = [LatexExtractionConfig()]  # no ExprExtractionConfig: it sends text to parse_expr, which evals
_DIGIT_RUN = re.compile(r"[0-9]+")  # a plain character class: linear, cannot backtrack


class _Overtime(BaseException):
    """Raised by the SIGALRM backstop; a BaseException so that library `except Exception` blocks can't swallow it."""


def _raise_overtime(signum, frame):
    raise _Overtime


def _bounded(seconds: float, fn, *args, **kwargs):
    """fn(*args, **kwargs), interrupted by _Overtime after `seconds` in the main thread on POSIX; elsewhere unbounded
    (signals only reach the main thread), and the screen carries the bound. An outer timer is re-armed afterwards."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    old_handler = signal.signal(signal.SIGALRM, _raise_overtime)
    # Re-fires every 50 ms until cancelled: an alarm that lands in a finalizer is swallowed ("Exception ignored").
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
    start = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        while True:  # a late alarm may land inside the clean-up; retry it so the outer handler is always restored
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old_handler)
                break
            except _Overtime:
                continue
        if old_delay:  # an outer timer (pytest-timeout, the user's) keeps running, less the time we took
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)


# We turn math-verify's timeouts off on purpose (see the module docstring); drop only its warning about that.
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(lambda record: "Timeout is disabled" not in record.getMessage())


def clean(text: str) -> str:
    """`text` without control, format, surrogate, private-use and unassigned characters (Unicode category C*), each
    space, tab or line break as a plain space, stripped."""
    out = []
    for ch in text:
        if " " < ch < "\x7f":
            out.append(ch)  # printable ASCII: the common case, no table look-up
        elif ch in "\t\n\r" or unicodedata.category(ch)[0] == "Z":
            out.append(" ")  # tabs, newlines, NBSP, ideographic space read as a space
        elif unicodedata.category(ch)[0] != "C":
            out.append(ch)  # letters, digits, symbols of any script stay (they are compared as exact strings)
    return "".join(out).strip()


def last_boxed(completion: str) -> str | None:
    """The raw content of the last \\boxed{...} / \\fbox{...}, or None when absent, unbalanced or over the cap.

    A linear scan with a depth counter; a backslash escapes the next character, so \\{ and \\} don't count."""
    pos, box = max((completion.rfind(box), box) for box in _BOXES)
    if pos < 0:
        return None
    start = pos + len(box)
    depth, i, end = 1, start, min(len(completion), start + MAX_ANSWER_CHARS + 1)
    while i < end:
        ch = completion[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return completion[start:i]
        i += 1
    return None  # truncated (the model's last word is cut off) or longer than MAX_ANSWER_CHARS


def _exponent_end(text: str, i: int) -> int:
    """Index just past the exponent that starts at text[i] (the character after '^')."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return i
    if text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return j + 1
        return len(text)
    if text[i] == "\\":  # a command: \pi, \frac{..}{..} is caught by the next '^' check either way
        j = i + 1
        while j < len(text) and text[j].isalpha():
            j += 1
        return j
    m = _DIGIT_RUN.match(text, i)
    return m.end() if m else i + 1


def _screen(text: str) -> bool:
    """Whether `text` (already cleaned) is safe to hand to math-verify / sympy."""
    if not text or len(text) > MAX_PARSE_CHARS or not text.isascii() or not text.isprintable():
        return False  # look-alikes (fullwidth digits, Cyrillic) never reach the lexer; str.isdigit() takes them
    depth = braces = 0  # all brackets (intervals mix them: "(1,4]"), and curly braces alone
    for ch in text:
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        braces += {"{": 1, "}": -1}.get(ch, 0)
        if depth > MAX_DEPTH:
            return False  # antlr prediction time grows with nesting
        if braces < 0:
            return False  # "a}{b" would close our \boxed{} wrapper early
    if braces:
        return False  # an unclosed "{" would swallow the wrapper's closing brace
    pos = text.find("^")
    while pos >= 0:
        end = _exponent_end(text, pos + 1)
        exponent = text[pos + 1:end]
        if "^" in exponent or "exp" in exponent or text[end:].lstrip().startswith("^"):
            return False  # a power tower: 9^{9^{9}}, 9^9^9, e^{\exp{..}} make sympy compute astronomically large powers
        if any(len(run) > MAX_EXPONENT_DIGITS for run in _DIGIT_RUN.findall(exponent)):
            return False  # 9^{999999999}: verify's numeric comparison runs for seconds
        pos = text.find("^", end)
    for m in re.finditer(r"!", text):
        before = text[:m.start()].rstrip()
        if before.endswith(("!", ")", "}", "]")):
            return False  # factorial of a computed value: (10!)! and 10^{10}! never finish
        run = re.search(r"[0-9]*$", before[-MAX_FACTORIAL_DIGITS - 1:]).group()
        if len(run) > MAX_FACTORIAL_DIGITS:
            return False  # 100000! is computed eagerly
    if ("binom" in text or "choose" in text) and any(len(r) > MAX_FACTORIAL_DIGITS for r in _DIGIT_RUN.findall(text)):
        return False  # latex2sympy evaluates \binom{100000}{50000} while parsing (~1 s)
    return True


@functools.lru_cache(maxsize=4096)
def _parse_once(text: str):
    """One bounded parse; an _Overtime propagates, and lru_cache caches only what returns."""
    try:
        return _bounded(PARSE_SECONDS, parse, "\\boxed{" + text + "}", extraction_config=_LATEX_ONLY,
                        parsing_timeout=None)
    except Exception:  # noqa: BLE001 - a verifier must not raise (issue 6); math-verify catches most errors itself
        return []


_GAVE_UP: set[str] = set()  # texts that overran the backstop twice: unparseable from then on


def _parse(text: str):
    """math-verify's parse of a screened answer (a list, empty when unparseable); cached because majority voting
    compares each answer with every class representative. The backstop measures wall time, so a busy machine (two
    runs side by side) can push a 30 ms parse past it: an overrun is therefore not cached but tried once more at
    once, and only a text that overruns both times is unparseable from then on (a hostile one costs two backstops)."""
    if text in _GAVE_UP:
        return []
    for _ in range(2):
        try:
            return _parse_once(text)
        except _Overtime:
            continue
    if len(_GAVE_UP) >= 4096:
        _GAVE_UP.clear()  # bounded, as the cache is
    _GAVE_UP.add(text)
    return []


def clear_parse_cache() -> None:
    """Forget every cached parse and every text given up on (tests that switch the screen off call this)."""
    _parse_once.cache_clear()
    _GAVE_UP.clear()


def equivalent(a: str, b: str) -> bool:
    """Whether answer `a` equals reference `b` (math-verify's verify(gold=b, target=a)); exact string comparison
    for answers the screen keeps away from sympy. Never raises."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        return False  # longer than any extracted answer: garbage, and not worth an O(n) clean
    a, b = clean(a), clean(b)
    if not a or not b:
        return False
    if a == b:
        return True  # same text, same answer; also spares sympy the common case in majority voting
    if not (_screen(a) and _screen(b)):
        return False
    pa, pb = _parse(a), _parse(b)
    if not pa or not pb:
        return False
    try:
        return bool(_bounded(VERIFY_SECONDS, verify, pb, pa, timeout_seconds=None))
    except _Overtime:
        return False
    except Exception:  # noqa: BLE001 - a verifier must not raise
        return False


class MathTask(SplitTask):
    name = "math"

    def __init__(self, path: str | Path = SAMPLE) -> None:
        rows = read_jsonl(path, required=("prompt", "answer"))
        self._splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
        for n, row in enumerate(rows, start=1):
            if row.get("split") not in self._splits:
                raise TaskError(f"{path} line {n}: split must be one of {sorted(self._splits)}")
            self._splits[row["split"]].append((row["prompt"], row["answer"]))
        # Warm up antlr and sympy outside the backstop, so a cold first parse (~0.1-0.3 s) is not cached as a timeout.
        for text in ("\\frac{1}{2}", "(1,2]", "x=5"):
            parse("\\boxed{" + text + "}", extraction_config=_LATEX_ONLY, parsing_timeout=None)

    def format_prompt(self, question: str) -> str:
        return f"{question}\nSolve the problem step by step and put the final answer in \\boxed{{}}.\n"

    def extract_answer(self, completion: str) -> str | None:
        if not isinstance(completion, str):
            return None
        raw = last_boxed(completion)
        answer = clean(raw) if raw is not None else ""
        return answer or None

    def is_equivalent(self, a: str, b: str) -> bool:
        return equivalent(a, b)
