"""Synthetic facts: invented entities with attributes, passages about them, closed-book questions (SEAL's organism).

SEAL's knowledge-incorporation setting (arXiv 2506.10943 §4.1, methods.md §5) on data a character-level model can
hold: a context is a short passage of 3-6 facts about one invented entity, each fact in one of two surface forms;
its questions ask each fact back, closed-book (the passage is not in the prompt), with a single one-word answer.

    passage:   "zuvo likes teal. rome is home to zuvo. zuvo eats figs."
    rewrite:   "the color is teal.\nthe city is rome.\nthe food is figs."                 (the oracle edit)
    question:  "what is the city of zuvo?"  or  "zuvo has what city?"          answer: "rome"

The rewrite ("implications") restates every fact in the canonical form "the A is V.", a form the passages never use;
it is the generator's exact target in its warm-up and the ladder's oracle edit (our analogue of the paper's GPT-4.1
implications). Like SEAL's, every training sequence is prefixed with the context's title, here the entity:
"zuvo: the city is rome." (SEAL's TRAINING_SEQUENCE_TEMPLATE "{title}\n{text}"), so an edit need not spell a name
the writer has never seen; a first organism whose edits had to ("the city of zuvo is rome.") wrote other names in
every line of every edit (docs/seal.md). Entities are four letters (consonant-vowel-consonant-vowel); the pool of all such
names is shuffled once with a fixed seed and cut into disjoint ranges: the warm-up's entities, the loop's `train`
contexts and the ladder's `test` contexts never share a name.

What the organism's warm-up saw (`warmup_pairs`), on WARMUP_ENTITIES entities disjoint from every context:
  1. each entity's passage as a titled sequence "E: passage" (loss on all of it), facts in the passage forms;
  2. each canonical statement as a titled sequence "E: the A is V." (what an inner update trains on);
  3. every fact asked back in both question forms, "what is the A of E?" and "E has what A?", loss on the answer;
  4. passage -> rewrite: the edit prompt `EDIT_TEMPLATE` with the passage, loss on the oracle rewrite (each such
     pair `FactsSpec.rewrite_repeats` times).
All as (prompt, completion) pairs through selfrl/sft.py, `sft_max_steps` random batches of `sft_batch_size`.
Without (4) the model could not write an edit; without (3) on facts it also read as statements, training on
statements would not carry over to answers (issue 17). Held-out entities it never saw: it can only guess their
values, and the inner update is what can teach them.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from selfrl.tasks import Task

log = logging.getLogger(__name__)

CHARS = "abcdefghijklmnopqrstuvwxyz .?:\n"
DATA_SEED = 20250610
# attribute -> (values, passage surface forms); the canonical form "the {a} of {e} is {v}." is kept for edits.
ATTRIBUTES = {
    "color": (("red", "blue", "green", "pink", "gold", "gray", "teal", "navy"),
              ("{e} likes {v}.", "{v} is the favorite color of {e}.")),
    "city": (("rome", "oslo", "lima", "bern", "riga", "baku", "doha", "kyiv"),
             ("{e} lives in {v}.", "{v} is home to {e}.")),
    "pet": (("cat", "dog", "owl", "fox", "yak", "eel", "bat", "ram"),
            ("{e} has a pet {v}.", "{v} is the pet of {e}.")),
    "food": (("rice", "corn", "figs", "kale", "pear", "lime", "okra", "yams"),
             ("{e} eats {v}.", "{v} is what {e} eats.")),
    "job": (("cook", "poet", "monk", "maid", "sage", "bard", "seer", "scout"),
            ("{e} works as a {v}.", "{v} is the job of {e}.")),
    "sport": (("golf", "judo", "polo", "rugby", "tennis", "darts", "sumo", "kendo"),
              ("{e} plays {v}.", "{v} is the sport of {e}.")),
}
QUESTION_FORMS = ("what is the {a} of {e}?", "{e} has what {a}?")
CANONICAL = "the {a} is {v}."
SEQUENCE_TEMPLATE = "{title}: {text}"
"""One inner-update training sequence of the organism (an edit line or the passage), titled with the entity."""
EDIT_TEMPLATE = "{passage}\nimplications:\n"
"""The organism's self-edit prompt: the passage, then the edit (one statement a line) up to EOS."""
QUESTION_TEMPLATE = "q: {question}\na: "
"""The organism's closed-book question prompt; the answer is the completion's first line."""
WARMUP_ENTITIES = 400
SPLIT_RANGES = {"warmup": (0, WARMUP_ENTITIES), "train": (1000, 1800), "test": (2000, 2500)}


def entity_names() -> list[str]:
    """Every consonant-vowel-consonant-vowel name, shuffled once with DATA_SEED (same order on every machine)."""
    cons, vows = "bdfgklmnprstvz", "aeiou"
    names = ["".join(t) for t in itertools.product(cons, vows, cons, vows)]
    random.Random(DATA_SEED).shuffle(names)
    return names  # 14*5*14*5 = 4900 names


def make_context(name: str, rng: random.Random, cid: str) -> dict:
    """One context: 3-6 facts about `name` in passage forms, their questions (one form each), the oracle rewrite."""
    attrs = rng.sample(list(ATTRIBUTES), rng.randint(3, 6))
    facts = [(a, rng.choice(ATTRIBUTES[a][0])) for a in attrs]
    passage = " ".join(rng.choice(ATTRIBUTES[a][1]).format(e=name, v=v) for a, v in facts)
    questions = [{"question": rng.choice(QUESTION_FORMS).format(a=a, e=name), "answer": v} for a, v in facts]
    rewrite = "\n".join(CANONICAL.format(a=a, v=v) for a, v in facts)
    return {"id": cid, "title": name, "passage": passage, "questions": questions, "rewrite": rewrite,
            "facts": [[a, v] for a, v in facts]}


def contexts(split: str, n: int | None = None) -> list[dict]:
    """The first `n` contexts of a split (`warmup`, `train` or `test`), one entity each, deterministic."""
    lo, hi = SPLIT_RANGES[split]
    names = entity_names()[lo:hi][:n]
    rng = random.Random(f"{DATA_SEED}-{split}")
    return [make_context(name, rng, f"{split}-{i:04d}") for i, name in enumerate(names)]


def edit_prompt(passage: str) -> str:
    return EDIT_TEMPLATE.format(passage=passage)


def question_prompt(question: str) -> str:
    return QUESTION_TEMPLATE.format(question=question)


def warmup_pairs(rewrite_repeats: int = 1) -> list[tuple[str, str]]:
    """The organism's SFT data (module docstring, items 1-4), on the warm-up entities only; each passage -> rewrite
    pair `rewrite_repeats` times."""
    pairs: list[tuple[str, str]] = []
    for c in contexts("warmup"):
        e = c["title"]
        pairs.append(("", SEQUENCE_TEMPLATE.format(title=e, text=c["passage"])))
        for a, v in c["facts"]:
            pairs.append(("", SEQUENCE_TEMPLATE.format(title=e, text=CANONICAL.format(a=a, v=v))))
            pairs.extend((question_prompt(f.format(a=a, e=e)), v) for f in QUESTION_FORMS)
        pairs.extend([(edit_prompt(c["passage"]), c["rewrite"])] * rewrite_repeats)
    return pairs


def normalize(text: str) -> str:
    """SQuAD's answer normalisation, minus articles: lower case, punctuation dropped, spaces collapsed."""
    kept = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower())
    return " ".join(kept.split())


class FactsTask(Task):
    """Closed-book answers to the facts questions: the first line of the completion, exact after normalisation (the
    answer is one word; containment would reward a line listing every value). Used by the probe gate."""

    name = "facts"

    def format_prompt(self, question: str) -> str:
        return question_prompt(question)

    def extract_answer(self, completion: str) -> str | None:
        first = normalize(completion.split("\n", 1)[0])
        return first or None

    def is_equivalent(self, a: str, b: str) -> bool:
        return normalize(a) == normalize(b)

    def train_prompts(self) -> list[str]:
        return [q["question"] for c in contexts("train") for q in c["questions"]]

    def eval_examples(self, split: str) -> list[tuple[str, str]]:
        return [(q["question"], q["answer"]) for c in contexts(split) for q in c["questions"]]


# ------------------------------------------------------------------------------------------------ the organism
@dataclass(frozen=True)
class FactsSpec:
    """Architecture and warm-up recipe of the facts organism (its cache key is this spec's hash)."""

    hidden_size: int = 96
    intermediate_size: int = 256
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    max_positions: int = 320
    sft_learning_rate: float = 2e-3
    sft_batch_size: int = 32
    sft_max_steps: int = 800
    rewrite_repeats: int = 1
    """Copies of each passage -> rewrite pair in the warm-up."""
    data_version: int = 2
    """Bumped whenever the warm-up data change, so that a cached organism of other data is never reused."""
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def train_facts_organism(spec: FactsSpec, out_dir: Path, progress: bool = True) -> dict:
    """Warm the organism up from scratch on `warmup_pairs()`; save model + tokenizer; return stats (closed-book
    accuracy on warm-up facts, which it saw, and on test facts, which it did not: the latter is chance)."""
    from selfrl.evaluate import greedy_accuracy
    from selfrl.organism import build_model, build_tokenizer
    from selfrl.sft import sft

    tokenizer = build_tokenizer(CHARS)
    model = build_model(spec, len(tokenizer), spec.max_positions)
    out = sft(model, tokenizer, warmup_pairs(spec.rewrite_repeats), learning_rate=spec.sft_learning_rate, batch_size=spec.sft_batch_size,
              max_steps=spec.sft_max_steps, seed=spec.seed, progress=progress, desc="facts organism SFT")
    task = FactsTask()
    seen = [(q["question"], q["answer"]) for c in contexts("warmup", 100) for q in c["questions"]]
    unseen = task.eval_examples("test")[:300]
    stats = {"sft_steps": out["steps"], "final_loss": out["loss"],
             "warmup_fact_accuracy": greedy_accuracy(model, tokenizer, task, seen, 8)[0],
             "test_fact_accuracy": greedy_accuracy(model, tokenizer, task, unseen, 8)[0],
             "parameters": sum(p.numel() for p in model.parameters()), "spec": asdict(spec)}
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "organism.json").write_text(json.dumps(stats, indent=2))
    return stats


def facts_organism_path(spec: FactsSpec = FactsSpec(), progress: bool = True) -> Path:
    """Path of the cached facts organism for `spec`, warming it up first if it is not cached yet."""
    from selfrl.organism import cache_dir

    final = cache_dir() / f"facts-organism-{spec.key()}"
    if (final / "organism.json").is_file():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("facts organism trained: %s", train_facts_organism(spec, tmp, progress=progress))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # atomic: a half-trained organism is never picked up from the cache
    return final
