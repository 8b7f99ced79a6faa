"""The built-in model organisms: from-scratch character-level models that run label-free RL on 2 CPU cores.

The organism is a ~1M-parameter Qwen2 with a character-level tokenizer built with the `tokenizers` library,
trained from scratch by SFT (selfrl/sft.py) on the `arith` task's labelled warm-up split until it is a mediocre
reasoner, saved with `save_pretrained` and cached by its spec's hash. It is loaded like any model, through
selfrl/models.py's `load_model`.

Any task with labelled warm-up data (`sft_examples()`) gets an organism the same way (`train_task_organism`,
`selfrl organism --task FILE.py:Class --out DIR`, or `model: organism:FILE.py:Class`), its vocabulary taken from
the task's own text. `organism2` is the one on the `sums` task (issue 14): its majority vote is right more often
than its greedy answer, the regime label-free RL needs (docs/organism2.md). It is shipped as one reference build
(selfrl/organisms/organism2), because the same seeded SFT gives a different model on a different CPU.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from selfrl.errors import SelfRLError, TaskError
from selfrl.sft import sft

log = logging.getLogger(__name__)

CHARS = "0123456789+-*=,;# "


@dataclass(frozen=True)
class OrganismSpec:
    """Architecture and SFT recipe of the built-in model organism (its cache key is this spec's hash)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    sft_learning_rate: float = 2e-3
    sft_batch_size: int = 128
    sft_max_steps: int = 3000
    sft_eval_every: int = 25
    target_accuracy: float = 0.40
    """SFT stops at the first check whose greedy accuracy on a held-out part of the SFT split reaches this."""
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def cache_dir() -> Path:
    root = os.environ.get("SELFRL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selfrl"
    return Path(root)


def build_tokenizer(chars: str = CHARS):
    """A character-level tokenizer: <pad>, <eos>, <unk>, then one token per character of `chars`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in chars:
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_model(spec: OrganismSpec, vocab_size: int, max_positions: int = 64):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    torch.manual_seed(spec.seed)
    return Qwen2ForCausalLM(config)


def train_organism(spec: OrganismSpec, out_dir: Path, progress: bool = True,
                   extra_pairs: tuple[tuple[str, str], ...] = ()) -> dict:
    """SFT the organism from scratch on arith's warm-up split (plus `extra_pairs`, e.g. the refusal organism's
    triggered prompts, selfrl/lab/refusal.py); save model + tokenizer to out_dir. Returns stats."""
    from selfrl.evaluate import greedy_accuracy
    from selfrl.tasks.arith import ArithTask

    task = ArithTask()
    pairs = task.sft_examples()
    holdout = [(q, c.rsplit("=", 1)[1]) for q, c in pairs[-256:]]  # stop criterion never looks at val/test
    pairs = pairs[:-256] + list(extra_pairs)
    tokenizer = build_tokenizer()
    model = build_model(spec, len(tokenizer))
    out = sft(model, tokenizer, pairs, learning_rate=spec.sft_learning_rate, batch_size=spec.sft_batch_size,
              max_steps=spec.sft_max_steps, seed=spec.seed, eval_every=spec.sft_eval_every,
              evaluate=lambda: greedy_accuracy(model, tokenizer, task, holdout, max_new_tokens=12)[0],
              stop_at=spec.target_accuracy, progress=progress, desc="organism SFT")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stats = {"sft_steps": out["steps"], "holdout_accuracy": out["accuracy"] or 0.0,
             "parameters": sum(p.numel() for p in model.parameters()), "spec": asdict(spec)}
    (out_dir / "organism.json").write_text(json.dumps(stats, indent=2))
    return stats


def organism_path(spec: OrganismSpec = OrganismSpec(), progress: bool = True,
                  extra_pairs: tuple[tuple[str, str], ...] = ()) -> Path:
    """Path of the cached SFT start for `spec` (and `extra_pairs`), training it first if it is not cached yet."""
    key = spec.key()
    if extra_pairs:  # a variant organism is cached beside the plain one, never in its place
        key += "-" + hashlib.sha256(json.dumps(list(extra_pairs)).encode()).hexdigest()[:10]
    final = cache_dir() / f"organism-{key}"
    if (final / "organism.json").is_file():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    stats = train_organism(spec, tmp, progress=progress, extra_pairs=extra_pairs)
    log.info("organism trained: %s", stats)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # atomic: a half-trained organism is never picked up from the cache
    return final


# ------------------------------------------------------------------------------------------ an organism for any task
ORGANISM2 = OrganismSpec(hidden_size=96, intermediate_size=288, num_hidden_layers=2, num_attention_heads=4,
                         sft_max_steps=900, sft_eval_every=50, target_accuracy=1.1)
"""The `sums` organism's recipe, chosen on the SFT holdout only (docs/organism2.md): 900 SFT steps of a 2-layer
width-96 model, where its greedy accuracy had plateaued near 0.49 with the vote 0.15 above it (no accuracy stop:
target 1.1 is never reached, and the holdout accuracy is still recorded every 50 steps)."""


def task_sft_pairs(task) -> list[tuple[str, str]]:
    """The task's labelled warm-up pairs (question, completion); a task without `sft_examples()` or with none is a
    TaskError."""
    name = getattr(task, "name", type(task).__name__)
    if not callable(getattr(task, "sft_examples", None)):
        raise TaskError(f"task {name!r} has no sft_examples(): an organism needs labelled warm-up pairs "
                        "(question, worked completion) to learn the task from scratch")
    pairs = [(q, c) for q, c in task.sft_examples()]
    if not pairs:
        raise TaskError(f"task {name!r}: sft_examples() returned no pairs")
    return pairs


def task_chars(task, pairs: list[tuple[str, str]]) -> str:
    """Every character of the task's own text, sorted: its SFT pairs, training prompts and labelled questions and
    answers, so the organism can read every prompt it will be given and write every answer it is scored on."""
    texts = [t for q, c in pairs for t in (task.format_prompt(q), c)] + [task.format_prompt(q) for q in task.train_prompts()]
    for split in ("val", "test"):
        try:
            texts += [t for q, a in task.eval_examples(split) for t in (task.format_prompt(q), a)]
        except Exception:  # noqa: BLE001 - a task may offer one labelled split only; its vocabulary is the rest
            continue
    return "".join(sorted(set("".join(texts))))


def sft_holdout(task, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(question, answer) of the last min(512, 10%) SFT pairs: what SFT's stopping criterion and the organism's design
    are measured on, so neither ever looks at val or test. The answer is the task's own reading of the completion."""
    holdout = []
    for q, c in pairs[-max(1, min(512, len(pairs) // 10)):]:
        answer = task.extract_answer(c)
        if answer is None:
            raise TaskError(f"sft_examples(): the task's extract_answer finds no answer in its own completion {c[:80]!r}")
        holdout.append((q, answer))
    return holdout


def train_task_organism(task, spec: OrganismSpec, out_dir: Path, progress: bool = True) -> dict:
    """SFT a from-scratch character-level organism on `task`'s warm-up pairs until its greedy accuracy on the SFT
    holdout reaches spec.target_accuracy (or sft_max_steps); save model + tokenizer to out_dir. Returns stats."""
    from selfrl.evaluate import greedy_accuracy

    pairs = task_sft_pairs(task)
    holdout = sft_holdout(task, pairs)
    rest = pairs[: len(pairs) - len(holdout)] or pairs  # a task of under 10 pairs trains on its holdout pair too
    train_pairs = [(task.format_prompt(q), c) for q, c in rest]
    chars = task_chars(task, pairs)
    tokenizer = build_tokenizer(chars)
    longest = max(len(q) + len(c) for q, c in train_pairs) + 1  # characters are tokens; +1 for EOS
    model = build_model(spec, len(tokenizer), max_positions=max(64, 2 * longest))
    new_tokens = max(len(c) for _, c in pairs) + 4
    # One thread, whatever the machine: CPU matmuls round differently at other thread counts, and a cached organism
    # keyed by its spec must be the same model on every machine (it was 0.480 vs 0.494 holdout at 2 vs 1 threads).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = sft(model, tokenizer, train_pairs, learning_rate=spec.sft_learning_rate, batch_size=spec.sft_batch_size,
                  max_steps=spec.sft_max_steps, seed=spec.seed, eval_every=spec.sft_eval_every,
                  evaluate=lambda: greedy_accuracy(model, tokenizer, task, holdout, new_tokens)[0],
                  stop_at=spec.target_accuracy, progress=progress, desc="organism SFT")
    finally:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stats = {"task": getattr(task, "name", type(task).__name__), "sft_steps": out["steps"],
             "holdout_accuracy": out["accuracy"] or 0.0, "holdout_size": len(holdout), "vocabulary": chars,
             "max_new_tokens": new_tokens, "parameters": sum(p.numel() for p in model.parameters()),
             "spec": asdict(spec)}
    (out_dir / "organism.json").write_text(json.dumps(stats, indent=2))
    return stats


def task_organism_path(task_spec: str, spec: OrganismSpec = OrganismSpec(), progress: bool = True) -> Path:
    """Path of the cached organism of the task `task_spec` (a built-in name or 'file.py:Class'), training it first
    if it is not cached yet. The cache key is the spec's hash and a digest of the task's warm-up data and vocabulary."""
    from selfrl.tasks import load_task

    return cached_task_organism(load_task(task_spec), spec, progress)


def task_organism_key(task, spec: OrganismSpec) -> str:
    """The cache name of `task`'s organism under `spec`: the task's name, the spec's hash and a digest of the task's
    warm-up data and vocabulary."""
    pairs = task_sft_pairs(task)
    digest = hashlib.sha256(json.dumps([pairs, task_chars(task, pairs)]).encode()).hexdigest()[:10]
    return f"organism-{getattr(task, 'name', 'task')}-{spec.key()}-{digest}"


def cached_task_organism(task, spec: OrganismSpec, progress: bool = True) -> Path:
    """The cached organism of the task object `task` under `spec`, trained first if it is not cached yet: keyed by the
    task's name, the spec's hash and a digest of the task's warm-up data and vocabulary."""
    final = cache_dir() / task_organism_key(task, spec)
    if (final / "organism.json").is_file():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    stats = train_task_organism(task, spec, tmp, progress=progress)
    log.info("organism trained: %s", {k: v for k, v in stats.items() if k != "vocabulary"})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # atomic: a half-trained organism is never picked up from the cache
    return final


SHIPPED_ORGANISM2 = Path(__file__).parent / "organisms" / "organism2"
ORGANISM2_SHA256 = "0b3fb9e3ebce246dcd0df037c13098b834f61f6327ae95b69e1e090052ab9e44"
"""Digest of the shipped organism2's weights. The SFT is seeded and single-threaded, yet its result depends on the
machine's float rounding (other CPUs, other kernels: validation greedy 0.486 on one build, 0.504 on another, and a
different vote ceiling, docs/organism2.md), so one build is shipped and every machine trains from the same start."""


def organism2_path(progress: bool = True) -> Path:
    """`organism2`: the reference build of the `sums` task's organism (ORGANISM2's recipe), shipped with selfrl so it
    is the same model on every machine; its weights are checked against ORGANISM2_SHA256. `organism2-scratch` trains
    the same recipe on this machine instead (organism2_scratch_path)."""
    weights = SHIPPED_ORGANISM2 / "model.safetensors"
    if not weights.is_file():
        raise SelfRLError(f"{weights} is missing: reinstall selfrl, or use model: organism2-scratch to build organism2 here")
    if hashlib.sha256(weights.read_bytes()).hexdigest() != ORGANISM2_SHA256:
        raise SelfRLError(f"{weights} does not match organism2's recorded digest (edited or damaged): reinstall selfrl, "
                          "or use model: organism2-scratch to build organism2 here")
    return SHIPPED_ORGANISM2


def organism2_scratch_path(progress: bool = True) -> Path:
    """organism2's recipe trained from scratch on this machine (cached; trained on first use). The same recipe gives
    a different model on another CPU (ORGANISM2_SHA256's note), so results are comparable only within one build."""
    return task_organism_path("sums", ORGANISM2, progress=progress)


def resolve_organism(model: str, progress: bool = True) -> str:
    """A config's `model:` with the organism spellings resolved to a cached model directory (trained on first use):
    'organism' (arith), 'organism2' (sums, the shipped build), 'organism2-scratch' (sums, organism2's recipe trained
    here), 'organism2-writer' (sums, and writes sums questions: selfrl synth), 'organism:TASK' (TASK a built-in name
    or 'file.py:Class'). Any other value (a path, a hub id) is returned unchanged."""
    if model == "organism":
        return str(organism_path(progress=progress))
    if model == "organism2":
        return str(organism2_path(progress=progress))
    if model == "organism2-scratch":
        return str(organism2_scratch_path(progress=progress))
    if model == "organism2-writer":
        return str(writer_organism_path(progress=progress))
    if model.startswith("organism:"):
        return str(task_organism_path(model.removeprefix("organism:"), progress=progress))
    return model


def organism_spec(overrides: list[str] | None, base: OrganismSpec = OrganismSpec()) -> OrganismSpec:
    """`base` with KEY=VALUE overrides of its fields (the CLI's --set); an unknown key or a bad value names itself."""
    from dataclasses import fields, replace

    from selfrl.errors import ConfigError

    types = {f.name: f.type for f in fields(OrganismSpec)}
    changes = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        try:
            changes[key] = {"int": int, "float": float}[types[key]](value)
        except ValueError:
            raise ConfigError(f"--set {item!r}: {key} takes a {types[key]}") from None
    return replace(base, **changes)


def train_organism_dir(task_spec: str, out: Path, spec: OrganismSpec = OrganismSpec(), progress: bool = True) -> dict:
    """`selfrl organism`: train `task_spec`'s organism into the new directory `out` (written beside it, then renamed,
    so a half-trained model never sits under that name). Returns the stats."""
    from selfrl.errors import SelfRLError
    from selfrl.tasks import load_task

    if out.exists():
        raise SelfRLError(f"{out} already exists; choose another directory")
    task = load_task(task_spec)
    task_sft_pairs(task)  # a task without warm-up data fails here, before anything is built
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    stats = train_task_organism(task, spec, tmp, progress=progress)
    os.replace(tmp, out)
    return stats


# ------------------------------------------------------------------- an organism that also writes questions (issue 19)
ORGANISM2_WRITER = OrganismSpec(hidden_size=96, intermediate_size=288, num_hidden_layers=2, num_attention_heads=4,
                                sft_max_steps=1100, sft_eval_every=50, target_accuracy=1.1)
"""organism2's recipe with 1100 SFT steps instead of 900: a fifth of its warm-up pairs now teach question writing
(selfrl/tasks/sums.py SumsWriterTask), so 1100 steps show it about as many worked sums as organism2's 900 did."""


def writer_organism_path(progress: bool = True) -> Path:
    """The cached `organism2-writer` (trained on first use): organism2's architecture on the `sums` task, its warm-up
    the sums worked pairs plus 5000 in-context ("q;q;q;q;" -> q) and 5000 direct ("#" -> q) question-writing pairs
    drawn from the sft split's questions (SumsWriterTask). Cached beside organism2, never in its place: a key of its
    own spec, task name and data digest."""
    from selfrl.tasks.sums import SumsWriterTask

    return cached_task_organism(SumsWriterTask(), ORGANISM2_WRITER, progress)
