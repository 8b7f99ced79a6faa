"""The filters between a model's self-written questions and training, and the proposer's reward: pure functions.

A synthesized question (selfrl/synth.py) reaches training only if it passes, in this order:

    parse          the completion holds a question (`question_pattern`, else its first non-empty line): else
                   "empty" or "unparseable"
    length         min_question_length <= characters <= max_question_length: else "too_short" / "too_long"
    exact dup      its normalised text is a seed's ("duplicate_of_seed") or an earlier kept question's ("duplicate")
    near dup       character n-gram Jaccard >= threshold with a seed or an earlier kept question ("near_duplicate...")
    contamination  it shares a word n-gram with a validation or test question ("contaminated_val" / "_test")
    answerability  the model's own majority share over its answers is in [min, max] ("no_answer", "below_band",
                   "above_band"); decided in selfrl/synth.py, which samples the votes

Normalisation (`normalize`) lower-cases, applies Unicode NFKC and splits into word and punctuation tokens, so
"12 + 34 + 56 =" and "12+34+56=" are one question and the arithmetic operators stay tokens.

Near duplicates: character 5-gram Jaccard >= 0.8 by default, the setting of Lee et al. 2022 ("Deduplicating training
data makes language models better", MinHash over 5-grams at 0.8). Jaccard is computed exactly through an inverted
index rather than estimated with MinHash: the sets here are thousands of short questions, and an exact test keeps a
planted near duplicate caught every time instead of with high probability.

Contamination: a word n-gram overlap test (GPT-3's decontamination used 8- to 13-grams; default 13) made to catch
short questions, where n-grams say nothing: an evaluation question shorter than n tokens counts as one gram of its
own length, so a synthesized question that holds it whole (as a token sequence) is contaminated. An exact or
normalised copy of any evaluation question, long or short, is therefore always caught, and so is a question that
embeds one ("Compute 12+34+56= quickly").
Only evaluation QUESTIONS are read; their answers never are.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> tuple[str, ...]:
    """Word and punctuation tokens of the NFKC, lower-cased text: "What is 2+3?" -> ('what', 'is', '2', '+', '3', '?')."""
    return tuple(_TOKEN.findall(unicodedata.normalize("NFKC", text).lower()))


def normalize(text: str) -> str:
    """The comparison key of a question: its tokens joined by single spaces."""
    return " ".join(tokens(text))


def parse_question(completion: str, pattern: str | None = None) -> tuple[str | None, str | None]:
    """(question, None) or (None, reason) with reason "empty" or "unparseable".

    pattern None: the first non-empty line of the completion. Else the first match of the regex `pattern` in it (its
    group "q" when the pattern names one, else the whole match); no match is "unparseable". Model output is only
    matched, never executed."""
    text = completion.strip() if isinstance(completion, str) else ""
    if not text:
        return None, "empty"
    if pattern is None:
        return next(line.strip() for line in text.splitlines() if line.strip()), None
    m = re.search(pattern, text)
    if m is None:
        return None, "unparseable"
    q = (m.group("q") if "q" in m.re.groupindex else m.group(0)).strip()
    return (q, None) if q else (None, "empty")


def char_ngrams(key: str, n: int) -> frozenset[str]:
    """Character n-grams of a normalised key; a key shorter than n is its own single gram."""
    if len(key) <= n:
        return frozenset([key])
    return frozenset(key[i : i + n] for i in range(len(key) - n + 1))


class JaccardIndex:
    """Character n-gram sets of stored texts, indexed by n-gram, answering "which stored text is most similar?" exactly.

    The intersection with every stored text that shares a gram is counted through the postings lists; the union follows
    from the set sizes (|A ∪ B| = |A| + |B| − |A ∩ B|), so the Jaccard is exact, not a MinHash estimate."""

    def __init__(self, n: int = 5):
        self.n = n
        self.sizes: list[int] = []
        self.postings: dict[str, list[int]] = defaultdict(list)

    def add(self, key: str) -> int:
        grams = char_ngrams(key, self.n)
        for g in grams:
            self.postings[g].append(len(self.sizes))
        self.sizes.append(len(grams))
        return len(self.sizes) - 1

    def most_similar(self, key: str) -> tuple[int | None, float]:
        """(index of the most similar stored text, its Jaccard), or (None, 0.0) when none shares a gram."""
        grams = char_ngrams(key, self.n)
        shared = Counter(i for g in grams for i in self.postings.get(g, ()))
        best, best_j = None, 0.0
        for i, inter in shared.items():
            j = inter / (len(grams) + self.sizes[i] - inter)
            if j > best_j:
                best, best_j = i, j
        return best, best_j


def _grams(seq: tuple[str, ...], n: int) -> Iterable[tuple[str, ...]]:
    return (seq[i : i + n] for i in range(len(seq) - n + 1))


class ContaminationIndex:
    """Word n-grams of the evaluation questions (module docstring), answering "does this question overlap one?"."""

    def __init__(self, questions: dict[str, list[str]], n: int = 13):
        self.n = n
        self.seqs = [(split, q, tokens(q)) for split, qs in questions.items() for q in qs]
        self.long: dict[tuple[str, ...], int] = {}  # n-gram -> the first evaluation question holding it
        self.short: dict[int, dict[tuple[str, ...], int]] = defaultdict(dict)  # length -> whole short question -> index
        for i, (_, _, seq) in enumerate(self.seqs):
            if len(seq) >= n:
                for g in _grams(seq, n):
                    self.long.setdefault(g, i)
            elif seq:
                self.short[len(seq)].setdefault(seq, i)

    def match(self, text: str) -> tuple[str, str] | None:
        """(split, evaluation question) that `text` overlaps, or None: a shared n-gram, or a short evaluation question
        inside `text` (its copy included). A short fragment of a long evaluation question is not a match: it does not
        hold the question (and a bare number would match half the arithmetic split)."""
        seq = tokens(text)
        hit = next((self.long[g] for g in _grams(seq, self.n) if g in self.long), None)
        for length, table in self.short.items():
            if hit is None and length <= len(seq):
                hit = next((table[g] for g in _grams(seq, length) if g in table), None)
        return None if hit is None else self.seqs[hit][:2]


def text_filters(questions: list[str | None], seeds: list[str], contamination: ContaminationIndex,
                 min_length: int = 1, max_length: int = 1000, near_ngram: int = 5,
                 near_threshold: float = 0.8) -> list[str | None]:
    """The reason each parsed question is dropped before any vote (None: it passes), in order.

    `questions` are parse_question's outputs (None for a completion that was already dropped by parsing: it keeps
    reason None here and the caller keeps parsing's reason). Duplicates are judged against the seeds and against the
    questions kept so far, so the first of two copies passes and the second is the duplicate."""
    seed_keys = {normalize(s) for s in seeds}
    seed_index, kept_index = JaccardIndex(near_ngram), JaccardIndex(near_ngram)
    for key in seed_keys:
        seed_index.add(key)
    kept_keys: set[str] = set()
    reasons: list[str | None] = []
    for q in questions:
        if q is None:
            reasons.append(None)
            continue
        key = normalize(q)
        reason = None
        if len(q) < min_length:
            reason = "too_short"
        elif len(q) > max_length:
            reason = "too_long"
        elif key in seed_keys:
            reason = "duplicate_of_seed"
        elif key in kept_keys:
            reason = "duplicate"
        elif seed_index.most_similar(key)[1] >= near_threshold:
            reason = "near_duplicate_of_seed"
        elif kept_index.most_similar(key)[1] >= near_threshold:
            reason = "near_duplicate"
        else:
            hit = contamination.match(q)
            if hit is not None:
                reason = f"contaminated_{hit[0]}"
        if reason is None:
            kept_keys.add(key)
            kept_index.add(key)
        reasons.append(reason)
    return reasons


def band_reason(answer: str | None, share: float, low: float, high: float) -> str | None:
    """Answerability by the model's own vote: None when the majority share is in [low, high] and there is a majority
    answer; else "no_answer", "below_band" or "above_band"."""
    if answer is None:
        return "no_answer"
    if share < low:
        return "below_band"
    if share > high:
        return "above_band"
    return None


def uncertainty_reward(share: float) -> float:
    """R-Zero's uncertainty reward (methods.md §9): r = 1 − 2·|p̂ − ½|, p̂ the solver's share agreeing with its own
    majority answer; 1 at p̂ = ½ (the solver is most unsure), 0 at p̂ = 0 or 1."""
    return 1.0 - 2.0 * abs(share - 0.5)


def proposer_rewards(shares: list[float | None], passed: list[bool]) -> list[float]:
    """The question writer's reward per written question: uncertainty_reward of the solver's majority share, 0 for a
    question that failed a filter before the vote (empty, unparseable, length, duplicate, near duplicate,
    contaminated) or was never voted on (share None). The answerability band is not a gate here: the uncertainty
    reward already scores the share. A GRPO loop over the proposer calls this once per group of written questions."""
    if len(shares) != len(passed):
        raise ValueError(f"proposer_rewards: {len(shares)} shares but {len(passed)} pass flags")
    return [uncertainty_reward(s) if ok and s is not None else 0.0 for s, ok in zip(shares, passed)]
