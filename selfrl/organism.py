"""The built-in model organisms: from-scratch character-level models that run label-free RL on 2 CPU cores.

The organism is a ~1M-parameter Qwen2 with a character-level tokenizer built with the `tokenizers` library,
trained from scratch by SFT (selfrl/sft.py) on the `arith` task's labelled warm-up split until it is a mediocre
reasoner, saved with `save_pretrained` and cached by its spec's hash. It is loaded like any model, through
selfrl/models.py's `load_model`.
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
