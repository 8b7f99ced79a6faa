"""Hostile model output (issue 6, item 4): extraction and equivalence of every built-in task never eval model text,
never raise, and return within 1 s on 1 MB strings, deep nesting, power towers, look-alikes and control characters.

The 1 s bound is a correctness bound on pathological input (a verifier that hangs stalls a training run), not a
speed benchmark: typical calls take milliseconds; math's worst case is its backstops (0.2 + 0.2 + 0.3 s).
"""
import builtins
import functools
import random
import re
import signal
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfrl.tasks import load_task

# The backstop's alarm can land in a GC callback, where Python ignores the exception and reports it; the alarm
# re-fires 50 ms later and stops the work (see selfrl/tasks/math.py), so only that report is silenced here.
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*_Overtime:pytest.PytestUnraisableExceptionWarning")
# pytest's unraisable hook imports tracemalloc on its first report; a re-fired alarm landing in that import (bytecode
# compiling) broke the hook itself ("Failed to process unraisable exception"), seen once in six runs on a loaded
# machine. Imported here, the hook's work shrinks to a lookup.
import tracemalloc  # noqa: E402,F401
BOUND = 1.0
MB = 1 << 20
_rng = random.Random(0)
JUNK = "".join(_rng.choice("0123456789+-*/^=(){}[]\\ abcxyz$!.,\n\t１Хх\u200d\u202e\x00") for _ in range(MB))
DEEP = "{" * 100_000 + "1" + "}" * 100_000

HOSTILE = {
    "junk_1mb": JUNK,
    "open_braces_1mb": "{" * MB,
    "boxed_nesting_1mb": "\\boxed{" * (MB // 7),
    "boxed_nesting_closed": "\\boxed{" * 20_000 + "1" + "}" * 20_000,
    "deep_braces_100k": DEEP,
    "boxed_deep_braces_100k": "\\boxed{" + DEEP + "}",
    "deep_parens_300": "(" * 300 + "1" + ")" * 300,
    "python_tower": "9**9**9",
    "latex_tower": "9^{9^{9}}",
    "chained_tower": "9^9^9",
    "googolplex": "10^{10^{100}}",
    "boxed_tower4": "\\boxed{9^{9^{9^{9}}}}",
    "big_exponent": "9^{999999999}",
    "negative_tower": "10^{-10^{10}}",
    "factorial_of_factorial": "(10!)!",
    "factorial_of_power": "10^{10}!",
    "big_factorial": "100000!",
    "big_binomial": "\\binom{100000}{50000}",
    "many_digits": "9" * 5000,
    "fullwidth_digits": "１２３",
    "cyrillic_lookalike": "\u0425 = 5",  # Cyrillic Ha looks like Latin X
    "zero_width_joiners": "1\u200d2\u200c3\u200b",
    "rtl_override": "\u202e321",
    "control_chars": "1\x00\x01\x07\x1b[31m2\x7f",
    "nul_bytes": "\x00" * 1000,
    "lone_surrogate": "12\ud800",
    "injection": "__import__('os').system('echo pwned')",
}


@functools.lru_cache(maxsize=None)
def get_task(name):
    return load_task(name)


@pytest.fixture(scope="module", params=["arith", "math"])
def task(request):
    return get_task(request.param)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    elapsed = time.perf_counter() - start
    assert elapsed < BOUND, f"{fn.__name__} took {elapsed:.2f} s"
    return result


def assert_sane_answer(answer):
    assert answer is None or (isinstance(answer, str) and 0 < len(answer) <= 1000)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_bounded_and_harmless(task, name):
    text = HOSTILE[name]
    for completion in (text, "\\boxed{" + text + "}", "=" + text, "The answer is $\\boxed{" + text + "}$.\n"):
        assert_sane_answer(timed(task.extract_answer, completion))
    for a, b in ((text, "1"), ("1", text), (text, text), (text, text + " ")):
        assert timed(task.is_equivalent, a, b) in (True, False)


@pytest.mark.parametrize("name", ["latex_tower", "googolplex", "big_exponent", "factorial_of_factorial",
                                  "big_binomial", "deep_parens_300"])
def test_math_refuses_what_sympy_cannot_finish(name):
    # Not equal to a small number, and not equal to a different spelling of itself: the screen keeps it from sympy.
    task = get_task("math")
    text = HOSTILE[name]
    assert timed(task.extract_answer, "\\boxed{" + text + "}") == text
    assert timed(task.is_equivalent, text, "1") is False
    assert timed(task.is_equivalent, text, "{" + text + "}") is False


@pytest.mark.parametrize("text, safe", [
    ("\\frac{1}{2}", True), ("2^{2011}", True), ("x^2+3x", True), ("999!", True), ("\\binom{10}{3}", True),
    ("\\left(\\frac{\\sqrt{3}}{2}, \\frac{1}{2}\\right)", True), ("((((((1))))))", True),
    ("(((((((1)))))))", False),  # depth 7
    ("9^{9^{9}}", False), ("9^9^9", False), ("e^{\\exp(2)}", False), ("2^{10000}", False), ("1000!", False),
    ("5!!", False), ("(3)!", False), ("\\binom{1000}{2}", False), ("a}{b", False), ("(}{]", False), ("{1", False), ("１", False), ("1" * 257, False),
])
def test_screen(text, safe):
    from selfrl.tasks.math import _screen

    assert _screen(text) is safe


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX interval timers")
@pytest.mark.parametrize("name", ["latex_tower", "big_exponent", "factorial_of_factorial", "big_binomial"])
def test_backstop_alone_bounds_what_the_screen_lets_through(monkeypatch, name):
    # Second layer: with the screen switched off, the SIGALRM backstop still ends sympy's work in time.
    import selfrl.tasks.math as m

    monkeypatch.setattr(m, "_screen", lambda text: len(text) <= m.MAX_PARSE_CHARS)
    m.clear_parse_cache()
    try:
        assert timed(get_task("math").is_equivalent, HOSTILE[name], "1") is False
    finally:
        m.clear_parse_cache()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX interval timers")
def test_an_overrun_parse_is_retried_not_cached(monkeypatch):
    # The backstop measures wall time: a busy machine can push a 30 ms parse past it once. That overrun must not
    # make the answer unparseable for the rest of the run; a text that overruns twice is given up on, for good.
    import selfrl.tasks.math as m

    get_task("math")  # its warm-up parses run before the counting below
    real, calls = m.parse, []

    def slow_first(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            time.sleep(m.PARSE_SECONDS + 0.3)  # interrupted by the backstop
        return real(*args, **kwargs)

    m.clear_parse_cache()
    monkeypatch.setattr(m, "parse", slow_first)
    try:
        assert m._parse("(1,4]") and len(calls) == 2  # overran, then parsed at once on the retry
        assert m.equivalent("(1,4]", "(1, 4]") is True
        calls.clear()
        monkeypatch.setattr(m, "parse", lambda *a, **k: (calls.append(a[0]), time.sleep(m.PARSE_SECONDS + 0.3)))
        assert m._parse("3/7") == [] and len(calls) == 2  # overran twice: given up on
        assert m._parse("3/7") == [] and len(calls) == 2  # ... and never parsed again
    finally:
        m.clear_parse_cache()


def test_math_invisible_characters_are_removed_look_alikes_kept_apart():
    task = get_task("math")
    assert task.extract_answer("\\boxed{1\u200d2\u202e3\x00}") == "123"
    assert task.extract_answer("\\boxed{12\ud800}") == "12"
    assert task.extract_answer("\\boxed{１２３}") == "１２３"  # kept, but never parsed as a number:
    assert task.is_equivalent("１２３", "123") is False
    assert task.is_equivalent("\u0425", "X") is False
    assert task.is_equivalent("１２３", "１２３") is True  # identical text is the same answer


def test_arith_takes_only_ascii_digits():
    task = get_task("arith")
    assert task.extract_answer("47+85+19=151") == "151"
    assert task.extract_answer("47+85+19=１５１") is None
    assert task.extract_answer("=" + "9" * 5000) is None  # only the 64-char tail is read, and it holds no '='
    assert task.extract_answer("9" * 5000 + "=" + "9" * 63) == "9" * 63  # so int() sees at most 63 digits


def test_no_model_text_is_evaluated(monkeypatch, tmp_path):
    # math-verify's LaTeX path evals exactly one kind of string: sympy.Number() of a number token from its own
    # lexer, e.g. "Integer (12 )". Record every eval/exec during hostile calls and check that nothing else runs.
    task = get_task("math")
    real_eval, real_exec = builtins.eval, builtins.exec
    seen = []
    monkeypatch.setattr(builtins, "eval", lambda src, *a, **k: (seen.append(("eval", src)), real_eval(src, *a, **k))[1])
    monkeypatch.setattr(builtins, "exec", lambda src, *a, **k: (seen.append(("exec", src)), real_exec(src, *a, **k))[1])
    marker = tmp_path / "pwned"
    payloads = [f"__import__('os').system('touch {marker}')", f"exec(\"open('{marker}', 'w')\")",
                "9**9**9", "\\frac{1}{2}+0.25", "(1,4]", "2.5", "x=5"]
    for p in payloads:
        task.is_equivalent(task.extract_answer("\\boxed{" + p + "}") or p, "0.75")
    monkeypatch.undo()
    assert not marker.exists()
    assert seen, "the spy saw no eval at all: math-verify changed; revisit this test"
    number = re.compile(r"(Integer|Float|Rational) \( ?'?[0-9.]+'? ?\)")
    for kind, src in seen:
        if not isinstance(src, str):
            assert src.co_filename.endswith(".py"), src  # a lazily imported module's code, e.g. sympy/tensor/tensor.py
        elif kind == "exec":
            assert src == "from sympy import *"  # parse_expr's namespace set-up: a constant
        else:
            assert number.fullmatch(src.strip()), src


def test_math_works_off_the_main_thread():
    # math-verify's own signal timeout raises ValueError outside the main thread; ours steps aside there.
    task = get_task("math")
    out = {}
    worker = threading.Thread(target=lambda: out.update(eq=task.is_equivalent("0.5", "\\frac{1}{2}"),
                                                        tower=task.is_equivalent("9^{9^{9}}", "1")))
    worker.start()
    worker.join(10)
    assert out == {"eq": True, "tower": False}


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX interval timers")
def test_outer_timer_survives_the_backstop():
    # pytest-timeout and users arm SIGALRM too; math-verify's signal.alarm(0) would cancel theirs, ours re-arms it.
    task = get_task("math")
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        assert task.is_equivalent("\\frac{3}{6}", "0.5")
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 20 < remaining <= 30
        assert signal.getsignal(signal.SIGALRM) is not old and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- property-based fuzzing (bounded budget: the whole file runs in well under a minute) -------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
any_text = st.text(st.characters(blacklist_categories=()), max_size=3000)  # includes surrogates and controls

atoms = st.one_of(st.integers(-10**6, 10**6).map(str), st.sampled_from(["x", "y", "\\pi", "e", "0.5", "9", "99999"]))
exprs = st.recursive(atoms, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "^", "!", ","]), inner).map(lambda t: "".join(t)),
    st.tuples(inner, inner).map(lambda t: f"{t[0]}^{{{t[1]}}}"),
    st.tuples(inner, inner).map(lambda t: f"\\frac{{{t[0]}}}{{{t[1]}}}"),
    inner.map(lambda s: f"({s})"), inner.map(lambda s: f"\\sqrt{{{s}}}"), inner.map(lambda s: f"{{{s}}}"),
    inner.map(lambda s: f"{s}!"), inner.map(lambda s: f"\\boxed{{{s}}}"),
), max_leaves=12)
rationals = st.tuples(st.integers(-999, 999), st.integers(1, 999))


@FUZZ
@given(text=any_text)
def test_fuzz_arbitrary_text(text):
    for task in (get_task("arith"), get_task("math")):
        answer = timed(task.extract_answer, text)
        assert_sane_answer(answer)
        assert timed(task.is_equivalent, text, "1") in (True, False)
        if answer is not None:
            assert timed(task.is_equivalent, answer, answer) is True  # an extracted answer equals itself


@FUZZ
@given(prefix=any_text.filter(lambda s: "\\boxed{" not in s and "\\fbox{" not in s), expr=exprs)
def test_fuzz_boxed_grammar_is_extracted_exactly(prefix, expr):
    # The last box of a completion holds a balanced expression: extraction returns it whole (or None past the cap).
    task = get_task("math")
    answer = timed(task.extract_answer, prefix + " \\boxed{" + expr + "} done.")
    inner = expr[expr.rfind("\\boxed{") + 7:] if "\\boxed{" in expr else None  # a box inside wins: it is the last
    if inner is None:
        assert answer == (expr.strip() if len(expr) <= 1000 else None)
    else:
        assert answer is None or len(answer) <= 1000


@FUZZ
@given(a=exprs, b=exprs)
def test_fuzz_equivalence_of_grammar_pairs(a, b):
    task = get_task("math")
    assert timed(task.is_equivalent, a, b) in (True, False)
    assert timed(task.is_equivalent, a, a) is True  # reflexive on identical text, whatever the screen says


@FUZZ
@given(r=rationals, s=rationals)
def test_fuzz_numeric_answers_compare_by_value_both_ways(r, s):
    task = get_task("math")
    (p, q), (u, v) = r, s
    frac = f"\\frac{{{p}}}{{{q}}}"
    assert timed(task.is_equivalent, frac, f"{p}/{q}") is True
    same = p * v == u * q
    other = f"\\frac{{{u}}}{{{v}}}"
    assert timed(task.is_equivalent, frac, other) is same
    assert timed(task.is_equivalent, other, frac) is same  # symmetric on plain numbers


@FUZZ
@given(a=st.text("0123456789+-*/^!(){}[]\\ ,.xe$%", max_size=80), b=st.text("0123456789+-*/^!(){}[] ,.x", max_size=80))
def test_fuzz_latex_alphabet_soup(a, b):
    # ASCII soup passes the look-alike check, so it exercises the bracket, tower and factorial screens and sympy.
    task = get_task("math")
    assert timed(task.is_equivalent, a, b) in (True, False)
    assert timed(task.is_equivalent, b, a) in (True, False)
    assert_sane_answer(timed(task.extract_answer, "\\boxed{" + a + "}"))
