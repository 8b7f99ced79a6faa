"""The card-game organism: a from-scratch character-level Qwen2 SFT-ed on solver outputs, the shared start of the
GeneralPoints SFT-vs-RL study (issue 16; the paper's "SFT first, for the format", arXiv 2501.17161 §5).

What the warm-up sees, exactly (`warmup_pairs`):

* Prompts are the task's compact questions plus a newline, e.g. "Cards: 7, 9, K, A. J, Q, K count as 10.\\n";
  completions are the answer JSON from the solver, e.g.
  '{"cards": ["7", "9", "K", "A"], "number": [7, 9, 10, 1], "formula": "(9-1)*(10-7)=24"}', then EOS.
  The loss is on the completion and EOS only (selfrl/sft.py). Single-turn only: no verifier text is trained on.
* Hands: the task's `train` split (ID hands whose value multisets never occur in `val` / `test_id`), minus the
  last HOLDOUT_HANDS, which only measure the warm-up (ID rule) for its stopping test.
* Rules: with probability `id_share` a train hand under the ID rule "J, Q, K count as 10". Otherwise a train hand
  holding a face card under another stated rule, half of the time one value "J, Q, K count as v" (v in 1..9),
  half of the time three distinct values "J, Q, K count as a, b, c" (a, b, c in 1..10): so that a small model
  learns to READ the rule rather than memorise "face = 10". No face card is ever valued 11, 12 or 13: the OOD
  rule "J, Q, K count as 11, 12, 13" (and the numbers 11-13 in any formula) never appears in the warm-up.
* A rule under which the hand has no solution is skipped; so is a (hand, rule) whose value multiset is a `val` or
  `test_id` hand's, so the warm-up never solves a held-out ID problem under another name.
* The formula is one solution drawn uniformly from all of the hand's solutions (seeded).

Post-training (the study's SFT arm and RL) sees the ID rule only (`PointsTask.sft_examples`, `train_prompts`).

Measured (default spec, 370k parameters, 1000 steps of 32 pairs, 1 thread on a 2-core machine shared with other
jobs, load average ~7): the warm-up takes 455 s; greedy single-turn success of the start is 1/128 on `test_id`
and 0/128 on `test_ood`; 44/128 ID answers are legal formulas with the wrong value (-1), and almost every OOD
answer uses a face card as 10 (-4). (Measured before the rule family was drawn first, when skipped stated-rule
draws left the ID share somewhat above `id_share`.)
Load it with `load_points_organism` (selfrl/models.py's `load_model` on the cached directory).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import string
from dataclasses import asdict, dataclass
from pathlib import Path

from selfrl.organism import build_model, build_tokenizer, cache_dir
from selfrl.sft import sft
from selfrl.tasks.points import Hand, PointsTask, answer_text, prompt_text, solutions

log = logging.getLogger(__name__)

CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"  # prompts, answers and verifier turns
HOLDOUT_HANDS = 32


@dataclass(frozen=True)
class PointsOrganismSpec:
    """Architecture and warm-up recipe of the card-game organism (its cache key is this spec's hash)."""

    hidden_size: int = 96
    intermediate_size: int = 288
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    max_positions: int = 1024
    """Context length: a 5-turn plain episode is ~900 characters."""
    warmup_pairs: int = 20000
    id_share: float = 0.5
    """Share of warm-up pairs under the ID rule; the rest state other face values (never 11, 12, 13)."""
    sft_learning_rate: float = 2e-3
    sft_batch_size: int = 32
    sft_max_steps: int = 1000
    sft_eval_every: int = 250
    target_accuracy: float = 0.5
    """The warm-up stops at the first check whose greedy ID success on the held-out hands reaches this."""
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def _stated_faces(rng: random.Random) -> tuple[int, int, int]:
    if rng.random() < 0.5:
        return (rng.randint(1, 9),) * 3
    return tuple(rng.sample(range(1, 11), 3))


def warmup_pairs(task: PointsTask, n: int, id_share: float, seed: int) -> list[tuple[str, str]]:
    """`n` (prompt, completion) pairs as the module docstring states, from the task's train hands."""
    rng = random.Random(seed)
    hands = task.hands("train")[:-HOLDOUT_HANDS]
    held = {tuple(sorted(h.values)) for split in ("val", "test_id") for h in task.hands(split)}
    face_hands = [h for h in hands if set(h.ranks) & set("JQK")]
    pairs = []
    for _ in range(n):
        stated = rng.random() >= id_share  # the rule family first, so skipped draws do not shift the shares
        while True:
            hand = Hand(rng.choice(face_hands).ranks, _stated_faces(rng)) if stated else rng.choice(hands)
            values = tuple(sorted(hand.values))
            sols = solutions(values)
            if sols and values not in held:
                break
        pairs.append((prompt_text(hand, "compact"), answer_text(hand, rng.choice(sols))))
    return pairs


def success_rate(model, tokenizer, hands: list[Hand], max_new_tokens: int = 96) -> float:
    """Share of hands whose greedy single-turn answer earns the +5 reward."""
    from selfrl.evaluate import greedy_completions
    from selfrl.tasks.points import score

    texts = greedy_completions(model, tokenizer, [prompt_text(h, "compact") for h in hands], max_new_tokens, 64)
    return sum(score(h, t)[0] == 5 for h, t in zip(hands, texts)) / max(len(hands), 1)


def train_points_organism(spec: PointsOrganismSpec, out_dir: Path, progress: bool = True) -> dict:
    """Warm up the organism from scratch (see the module docstring); save model + tokenizer to out_dir."""
    task = PointsTask(style="compact")
    pairs = warmup_pairs(task, spec.warmup_pairs, spec.id_share, spec.seed)
    holdout = task.hands("train")[-HOLDOUT_HANDS:]
    tokenizer = build_tokenizer(CHARS)
    model = build_model(spec, len(tokenizer), spec.max_positions)
    out = sft(model, tokenizer, pairs, learning_rate=spec.sft_learning_rate, batch_size=spec.sft_batch_size,
              max_steps=spec.sft_max_steps, seed=spec.seed, eval_every=spec.sft_eval_every,
              evaluate=lambda: success_rate(model, tokenizer, holdout), stop_at=spec.target_accuracy,
              progress=progress, desc="points organism SFT")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stats = {"sft_steps": out["steps"], "holdout_success": out["accuracy"] or 0.0,
             "parameters": sum(p.numel() for p in model.parameters()), "spec": asdict(spec)}
    (out_dir / "organism.json").write_text(json.dumps(stats, indent=2))
    return stats


def points_organism_path(spec: PointsOrganismSpec = PointsOrganismSpec(), progress: bool = True) -> Path:
    """Path of the cached card-game organism for `spec`, training it first if it is not cached yet."""
    final = cache_dir() / f"points-organism-{spec.key()}"
    if (final / "organism.json").is_file():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    stats = train_points_organism(spec, tmp, progress=progress)
    log.info("points organism trained: %s", stats)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # atomic: a half-trained organism is never picked up from the cache
    return final


def load_points_organism(path: Path):
    """(model, tokenizer) of a saved card-game organism, through selfrl/models.py's `load_model` (which reads its
    character-level tokenizer back as itself, spaces and newlines included)."""
    import torch

    from selfrl.models import load_model

    return load_model(str(path), torch.device("cpu"))
