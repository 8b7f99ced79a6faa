"""Built-in task `points`: GeneralPoints, the 24 card game of "SFT memorizes, RL generalizes" (arXiv 2501.17161,
methods.md §6), text variant, with the paper's verifier reward.

    question:   "Cards: J, 3, 7, 8. J, Q, K count as 10."
    completion: '{"cards": ["J", "3", "7", "8"], "number": [10, 3, 7, 8], "formula": "(10-8)*(3+... )=24"}'

The environment. A hand is 4 cards, ranks A..K (values 1..13) with suits, drawn at random and redrawn until the
exact-fraction brute-force solver finds a formula for 24 (`draw_hand`, as the paper's `reset`). The rule stands in
the prompt: in distribution "J, Q, K count as 10"; out of distribution "J, Q, K count as 11, 12, 13", and every OOD
hand holds at least one face card (the paper draws 3 cards plus one of J/Q/K and shuffles). The prompt shows ranks
only, as the paper's language variant does (suits matter only to its image variant). A is 1, as in the paper's
prompt, which does not say so.

The reward (`score`) is the paper's `step_rewards` (utils_rl.py, language-only) rule by rule; penalties add up:

    -3  per format error: illegal characters (then nothing else is checked), a number/operator/parenthesis in a
        place where it cannot stand, an unmatched ')'; also no formula at all, and (ours) a formula over
        MAX_FORMULA_CHARS
    -2  a number that is not a card's value, else a card value used too often (one penalty for the two, as in
        the paper's if/elif); -2 more when some card is unused
    +5  no penalty so far and the formula equals 24
    +1  no penalty so far, the formula cannot be evaluated (unclosed '(', trailing operator, division by zero) and
        is the beginning of one of the hand's solutions ("partial solution")
    -1  no penalty so far and the formula is legal but not 24 (or cannot be evaluated and starts no solution); the
        message names the longest beginning of it that starts a solution

Only the formula is scored (the paper's language variant ignores `cards` and `number`); a trailing "=..." is cut
off. The reasons are returned as messages; `feedback` joins them into the verifier's user turn ("You failed this
trial because ..."). The formula is taken from the completion parsed as JSON, else from the first
`"formula": "..."`, as the paper's `re_match` does.

Where we differ from the paper's code, and why:
* The value is computed with exact Fractions on a parsed AST (`evaluate_formula`), never `eval`: the paper's float
  `eval` scores the classic 8/(3-8/3) as 23.99999999999998, i.e. wrong.
* A formula that passes every check, is not 24 and is a whole solution's prefix earned 0 with no message in the
  paper (only reachable through the float error above); here every legal wrong formula earns -1.
* Model text is hostile input: a formula longer than MAX_FORMULA_CHARS is a format error before any work (the
  paper's `int()` on a 5000-digit number raises), parentheses deeper than MAX_DEPTH cannot be evaluated (CPython's
  parser stops at 200), and no literal above MAX_LITERAL is computed with. Every completion is scored in well under
  a second, whatever its size (tests/test_points.py fuzzes this).
* Solutions are rendered with the parentheses precedence needs (the paper inserts brackets at fixed positions);
  only the "partial solution" prefix test reads them.

Splits (`make_splits`, fixed seed, every machine the same): `train` ID hands (unlabelled for RL; the warm-up's
hands), `val` and `test_id` ID hands whose value multisets (e.g. {3, 7, 8, 10}) never occur in `train`, `test_ood`
hands under the OOD rule. The gold answer of a hand is "24 using <its sorted values>", and `extract_answer` gives
"<value> using <sorted numbers>" of a completion's legal formula, so an equivalent answer is exactly the +5 case.
"""
from __future__ import annotations

import ast
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from selfrl.errors import TaskError
from selfrl.tasks import Task

TARGET = 24
RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")  # values 1..13
SUITS = ("H", "S", "D", "C")
ID_FACES = (10, 10, 10)  # values of J, Q, K in distribution
OOD_FACES = (11, 12, 13)  # out of distribution: never trained on
REWARD_CORRECT, REWARD_PARTIAL, REWARD_WRONG_VALUE, REWARD_BAD_NUMBERS, REWARD_BAD_FORMAT = 5, 1, -1, -2, -3
MAX_FORMULA_CHARS = 200  # a 4-card formula is ~15 characters; this bounds every later step
MAX_DEPTH = 32  # nesting of parentheses we evaluate; deeper is "cannot be evaluated"
MAX_LITERAL = 10**6  # a card is <= 13; larger literals are never computed with
SPLIT_SIZES = {"val": 32, "test_id": 128, "test_ood": 256, "train": 512}
DATA_SEED = 20250128
# The paper's tokens: numbers, operators, parentheses. re.ASCII: without it \d takes other scripts' digits.
_TOKEN = re.compile(r"\d+|[-+*/()]", re.ASCII)
_FORMULA_FIELD = re.compile(r'"formula"\s*:\s*"([^"\n]*)"')
_QUESTION = re.compile(r"Cards: (\w+), (\w+), (\w+), (\w+)\. J, Q, K count as (\d+)(?:, (\d+), (\d+))?\.")


# ------------------------------------------------------------------------------------------------------ hands
@dataclass(frozen=True)
class Hand:
    """Four cards and the rule that values the face cards."""

    ranks: tuple[str, ...]  # e.g. ("J", "3", "7", "8")
    faces: tuple[int, int, int] = ID_FACES  # values of J, Q, K under the stated rule
    suits: tuple[str, ...] = ()  # drawn hands only; the text task never shows them

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(self.faces[RANKS.index(r) - 10] if r in "JQK" else RANKS.index(r) + 1 for r in self.ranks)

    @property
    def rule(self) -> str:
        a, b, c = self.faces
        return f"J, Q, K count as {a}" if a == b == c else f"J, Q, K count as {a}, {b}, {c}"

    def question(self) -> str:
        return f"Cards: {', '.join(self.ranks)}. {self.rule}."

    def gold(self) -> str:
        return answer_key(TARGET, self.values)


def hand_from_question(question: str) -> Hand:
    m = _QUESTION.fullmatch(question.strip())
    if not m or any(r not in RANKS for r in m.groups()[:4]):
        raise TaskError(f"not a points question: {question[:80]!r}")
    faces = tuple(int(v) for v in m.groups()[4:] if v is not None)
    return Hand(tuple(m.groups()[:4]), faces * 3 if len(faces) == 1 else faces)


def answer_key(value, numbers) -> str:
    return f"{value} using {','.join(str(n) for n in sorted(numbers))}"


# ----------------------------------------------------------------------------------------------------- solver
_OPS = {"+": 1, "-": 1, "*": 2, "/": 2}  # precedence


def _combine(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b else None


def _render(op: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
    """(text, precedence) of `left op right` with the parentheses precedence and left-associativity need."""
    p = _OPS[op]
    lt = f"({left[0]})" if left[1] < p else left[0]
    rt = f"({right[0]})" if right[1] < p or (right[1] == p and op in "-/") else right[0]
    return lt + op + rt, p


def _splits(values: tuple[int, ...]):
    """Distinct ordered (left, right) divisions of a sorted multiset into two non-empty sorted parts."""
    n, seen = len(values), set()
    for mask in range(1, 2**n - 1):
        left = tuple(v for i, v in enumerate(values) if mask >> i & 1)
        right = tuple(v for i, v in enumerate(values) if not mask >> i & 1)
        if (left, right) not in seen:
            seen.add((left, right))
            yield left, right


@lru_cache(maxsize=None)
def _expressions(values: tuple[int, ...]) -> dict[Fraction, frozenset[tuple[str, int]]]:
    """Every expression over the sorted multiset `values` (each used once, any order and bracketing), grouped by
    exact value. Memoised: all hands share their sub-multisets of 1-3 cards."""
    if len(values) == 1:
        return {Fraction(values[0]): frozenset({(str(values[0]), 3)})}
    out: dict[Fraction, set] = {}
    for left, right in _splits(values):
        for lv, lts in _expressions(left).items():
            for rv, rts in _expressions(right).items():
                for op in _OPS:
                    v = _combine(op, lv, rv)
                    if v is not None:
                        out.setdefault(v, set()).update(_render(op, lt, rt) for lt in lts for rt in rts)
    return {v: frozenset(t) for v, t in out.items()}


def _needed(op: str, left: Fraction, target: int) -> Fraction | None:
    """The right operand r with `left op r == target`, or None when there is none."""
    if op == "+":
        return target - left
    if op == "-":
        return left - target
    if op == "*":
        return Fraction(target) / left if left else None
    return left / target if left else None  # left / r == target, r != 0


@lru_cache(maxsize=4096)
def solutions(values: tuple[int, ...], target: int = TARGET) -> tuple[str, ...]:
    """All formulas using each of `values` once that equal `target` exactly, sorted. Only the top operation is
    searched by lookup (which right-hand value would reach the target), so a hand costs milliseconds."""
    found = set()
    for left, right in _splits(tuple(sorted(values))):
        lexp, rexp = _expressions(left), _expressions(right)
        for lv, lts in lexp.items():
            for op in _OPS:
                rv = _needed(op, lv, target)
                if rv is not None and rv in rexp:
                    found.update(_render(op, lt, rt)[0] for lt in lts for rt in rexp[rv])
    return tuple(sorted(found))


def draw_hand(rng: random.Random, ood: bool = False) -> Hand:
    """The paper's draw: 4 random cards (OOD: 3 random plus one of J/Q/K, shuffled), redrawn until solvable."""
    faces = OOD_FACES if ood else ID_FACES
    while True:
        idx = [rng.randrange(13) for _ in range(3)] + [rng.randrange(10, 13) if ood else rng.randrange(13)]
        if ood:
            rng.shuffle(idx)
        hand = Hand(tuple(RANKS[i] for i in idx), faces, tuple(rng.choice(SUITS) for _ in range(4)))
        if solutions(tuple(sorted(hand.values))):
            return hand


def make_splits(seed: int = DATA_SEED) -> dict[str, list[Hand]]:
    """{split: hands}: distinct rank multisets within a split; ID test hands' value multisets never in train."""
    rng = random.Random(seed)
    splits: dict[str, list[Hand]] = {name: [] for name in SPLIT_SIZES}
    held: set[tuple[int, ...]] = set()  # value multisets of val and test_id
    seen: dict[str, set] = {name: set() for name in SPLIT_SIZES}
    for name, size in SPLIT_SIZES.items():
        for _ in range(200 * size):  # bounded: the supply of distinct solvable hands is finite
            if len(splits[name]) == size:
                break
            hand = draw_hand(rng, ood=name == "test_ood")
            ranks, values = tuple(sorted(hand.ranks)), tuple(sorted(hand.values))
            if ranks in seen[name] or (name == "train" and values in held):
                continue
            if name in ("val", "test_id"):
                if values in held:
                    continue
                held.add(values)
            seen[name].add(ranks)
            splits[name].append(hand)
        if len(splits[name]) < size:
            raise TaskError(f"points: only {len(splits[name])} distinct hands for split {name!r}, asked {size}")
    return splits


# ---------------------------------------------------------------------------------------------------- verifier
class FormulaError(ValueError):
    """A formula that cannot be evaluated (the paper's `eval` raising)."""


def evaluate_formula(text: str) -> Fraction:
    """The exact value of an arithmetic formula of integers, + - * / and parentheses, parsed (never evaluated as
    code). Anything else, and anything past the bounds, raises FormulaError; so does division by zero."""
    if not isinstance(text, str) or len(text) > MAX_FORMULA_CHARS:
        raise FormulaError("formula too long")
    depth = 0
    for ch in text:  # CPython's parser recurses per '('; bound it before parsing
        depth += (ch == "(") - (ch == ")")
        if depth > MAX_DEPTH:
            raise FormulaError("parentheses nested too deep")
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise FormulaError(f"not a formula: {type(e).__name__}") from None
    return _value(tree)


def _value(node) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if node.value > MAX_LITERAL:
            raise FormulaError("number too large")
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        v = _combine(_AST_OPS[type(node.op)], _value(node.left), _value(node.right))
        if v is None:
            raise FormulaError("division by zero")
        return v
    raise FormulaError(f"{type(node).__name__} is not allowed in a formula")


_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def extract_formula(completion: str) -> str | None:
    """The formula of an answer, cut at '=': the "formula" field of the completion parsed as JSON, else of the
    first '"formula": "..."' in it (the paper's `re_match`); None when there is none."""
    if not isinstance(completion, str):
        return None
    try:
        formula = json.loads(completion)["formula"]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        m = _FORMULA_FIELD.search(completion)
        formula = m.group(1) if m else None
    return formula.split("=")[0] if isinstance(formula, str) else None


def _format_errors(tokens: list[str]) -> list[str]:
    """The paper's sequence check: each token must follow one that can precede it; ')' must close a '('."""
    errors, prev, open_ = [], None, 0
    for tok in tokens:
        kind = "number" if tok.isdigit() else {"(": "open", ")": "close"}.get(tok, "operator")
        if kind in ("number", "open") and prev not in (None, "operator", "open"):
            errors.append("invalid sequence after number" if kind == "number" else "invalid sequence before '('")
        elif kind == "operator" and prev not in ("number", "close"):
            errors.append("invalid sequence after operator")
        elif kind == "close" and prev not in ("number", "close"):
            errors.append("invalid sequence after ')'")
        elif kind == "close" and not open_:
            errors.append("unmatched closing parenthesis")
        elif kind == "open":
            open_ += 1
        elif kind == "close":
            open_ -= 1
        prev = kind
    return errors


def _number_errors(tokens: list[str], values: tuple[int, ...]) -> list[str]:
    used = Counter(int(t) for t in tokens if t.isdigit())  # tokens are <= MAX_FORMULA_CHARS digits: int() is cheap
    cards = Counter(values)
    errors = []
    invalid = [n for n in used if n not in cards]
    overused = [n for n in used if used[n] > cards[n]]
    if invalid:
        errors.append(f"you used invalid numbers: {invalid}")
    elif overused:
        errors.append(f"you used numbers: {overused} too many times")
    unused = [n for n in cards if cards[n] > used[n]]
    if unused:
        errors.append(f"you didn't use numbers: {unused}")
    return errors


def score_formula(formula: str | None, values: tuple[int, ...], target: int = TARGET) -> tuple[int, list[str]]:
    """(reward, reasons) of a formula for cards of these values (see the module docstring's table)."""
    if formula is None:
        return REWARD_BAD_FORMAT, ["no formula found"]
    if len(formula) > MAX_FORMULA_CHARS:
        return REWARD_BAD_FORMAT, [f"the formula is longer than {MAX_FORMULA_CHARS} characters"]
    tokens = _TOKEN.findall(formula)
    if "".join(tokens) != formula:
        return REWARD_BAD_FORMAT, ["illegal characters"]
    messages = _format_errors(tokens)
    reward = REWARD_BAD_FORMAT * len(messages)
    number_errors = _number_errors(tokens, values)
    reward += REWARD_BAD_NUMBERS * len(number_errors)
    if messages or number_errors:
        return reward, messages + number_errors
    sols = solutions(tuple(sorted(values)), target)
    try:
        if evaluate_formula(formula) == target:
            return REWARD_CORRECT, ["Correct solution"]
    except FormulaError:
        if any(s.startswith(formula) for s in sols):
            return REWARD_PARTIAL, ["partial solution"]
    prefix = ""  # the longest run of whole tokens that starts a solution
    for tok in tokens:
        if not any(s.startswith(prefix + tok) for s in sols):
            break
        prefix += tok
    if prefix:
        return REWARD_WRONG_VALUE, [f"{prefix} is partially correct but the full formula does not match any solution"]
    return REWARD_WRONG_VALUE, ["your formula does not match any solution"]


def score(hand: Hand, completion: str) -> tuple[int, list[str]]:
    """The verifier's reward of a completion for a hand, and its reasons."""
    return score_formula(extract_formula(completion), hand.values)


def feedback(messages: list[str]) -> str:
    """The verifier's user turn after a failed attempt (the paper's trainer: reasons joined by ', ', then '.')."""
    return f"You failed this trial because {', '.join(messages)}."


def answer_text(hand: Hand, formula: str) -> str:
    """A completion in the answer format: the cards, their numbers under the hand's rule, the formula."""
    return json.dumps({"cards": list(hand.ranks), "number": list(hand.values), "formula": f"{formula}={TARGET}"})


# -------------------------------------------------------------------------------------------------------- task
PROMPT = """You are an expert player of the {target} points card game. You get 4 cards.
Note that {rule}, and each card must be used exactly once.
Write a formula that evaluates to {target} with the numbers of the cards and the operators '+', '-', '*', '/', '(', ')' and '='.

Cards: {cards}

Answer with one JSON object and nothing else:
{{"cards": [the 4 cards], "number": [the 4 numbers of the cards], "formula": "a formula that equals {target}"}}"""


def prompt_text(hand: Hand, style: str = "full") -> str:
    """The first user turn for a hand: the instruction prompt ("full") or the question line ("compact")."""
    if style == "compact":
        return hand.question() + "\n"
    return PROMPT.format(target=TARGET, rule=hand.rule, cards=", ".join(hand.ranks))


class PointsTask(Task):
    """The card game as a task. `style="full"`: the instruction prompt above, for pretrained (chat) models;
    `style="compact"`: the question line itself, for the character-level organism (selfrl/points_organism.py)."""

    name = "points"

    def __init__(self, style: str = "full", seed: int = DATA_SEED) -> None:
        if style not in ("full", "compact"):
            raise TaskError(f"task 'points': style must be 'full' or 'compact', not {style!r}")
        self.style = style
        self._splits = make_splits(seed)

    def format_prompt(self, question: str) -> str:
        return prompt_text(hand_from_question(question), self.style)

    def extract_answer(self, completion: str) -> str | None:
        """"<value> using <sorted numbers>" of the completion's formula when it passes the paper's format checks and
        can be evaluated; label-free (it never reads the hand)."""
        formula = extract_formula(completion)
        if formula is None or len(formula) > MAX_FORMULA_CHARS:
            return None
        tokens = _TOKEN.findall(formula)
        if "".join(tokens) != formula or _format_errors(tokens):
            return None
        try:
            value = evaluate_formula(formula)
        except FormulaError:
            return None
        return answer_key(value, [int(t) for t in tokens if t.isdigit()])

    def is_equivalent(self, a: str, b: str) -> bool:
        return a.strip() == b.strip()

    def hands(self, split: str) -> list[Hand]:
        if split not in self._splits:
            raise TaskError(f"task 'points' has splits {sorted(self._splits)}, not {split!r}")
        return list(self._splits[split])

    def train_prompts(self) -> list[str]:
        return [h.question() for h in self._splits["train"]]

    def train_answers(self) -> list[str]:
        return [h.gold() for h in self._splits["train"]]

    def eval_examples(self, split: str) -> list[tuple[str, str]]:
        if split == "train":
            raise TaskError("task 'points' has labelled splits 'val', 'test_id' and 'test_ood', not 'train'")
        return [(h.question(), h.gold()) for h in self.hands(split)]

    def sft_examples(self, per_hand: int = 3, seed: int = 0) -> list[tuple[str, str]]:
        """The paper's SFT data: (question, solver answer) for train hands under the ID rule, up to `per_hand`
        distinct solutions each, chosen with a seeded generator."""
        rng = random.Random(seed)
        pairs = []
        for hand in self._splits["train"]:
            sols = list(solutions(tuple(sorted(hand.values))))
            for formula in rng.sample(sols, min(per_hand, len(sols))):
                pairs.append((hand.question(), answer_text(hand, formula)))
        return pairs

    def score(self, hand: Hand | str, completion: str) -> tuple[int, list[str]]:
        """The verifier's (reward, reasons) for a Hand or a question text."""
        return score(hand if isinstance(hand, Hand) else hand_from_question(hand), completion)
