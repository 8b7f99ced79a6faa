"""Loading causal LMs, and the built-in model organism.

Every model, the organism included, is loaded through `load_model` (AutoTokenizer + AutoModelForCausalLM
`from_pretrained` on a local path or hub id). The organism is a ~1M-parameter Qwen2 with a character-level
tokenizer built with the `tokenizers` library, trained from scratch by SFT on the `arith` task's labelled
warm-up split until it is a mediocre reasoner, saved with `save_pretrained` and cached by its spec's hash.
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

from selfrl.errors import ModelError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("device: cuda requested but torch sees no CUDA device")
    return torch.device(name)


def load_model(path: str, device: torch.device, dtype: str = "float32"):
    """(model, tokenizer) from a local directory or hub id; a missing path or a tokenizer without EOS is a ModelError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfrl import lora

    looks_local = os.path.sep in path or path.startswith(".") or Path(path).exists()
    if looks_local and not Path(path).is_dir():
        raise ModelError(f"model path not found: {path}")
    if looks_local and lora.is_adapter_dir(path):  # a LoRA checkpoint: its base with the adapter merged in
        base_path = lora.base_of(path)
        base, tokenizer = load_model(base_path, device, dtype)  # an adapter is trained with its base's tokenizer
        try:
            return lora.merge(base, path).to(device), tokenizer
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"cannot apply LoRA adapter {path} to {base_path}: {str(e).splitlines()[0]}") from None
    if looks_local and not (Path(path) / "config.json").is_file():
        raise ModelError(f"model directory {path} has no config.json: not a Hugging Face model (save_pretrained) directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {path!r}: {first}") from None
    if tokenizer.eos_token_id is None:
        raise ModelError(f"tokenizer of {path!r} has no EOS token: completions could never end")
    if tokenizer.pad_token_id is None:
        # Common for base checkpoints (Llama, Qwen base); TRL does the same. Padding is masked everywhere.
        log.warning("tokenizer of %s has no pad token; using its EOS token for padding", path)
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


# ------------------------------------------------------------------------------------------------ the organism
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


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in CHARS:
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_model(spec: OrganismSpec, vocab_size: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    torch.manual_seed(spec.seed)
    return Qwen2ForCausalLM(config)


def _sft_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded question+completion+EOS with labels only on the completion and EOS."""
    q = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    c = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    seqs = [a + b + [tokenizer.eos_token_id] for a, b in zip(q, c)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for i, (s, qi) in enumerate(zip(seqs, q)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, len(qi) : len(s)] = torch.tensor(s[len(qi) :])
    return {"input_ids": ids, "attention_mask": ids != tokenizer.pad_token_id, "labels": labels}


def train_organism(spec: OrganismSpec, out_dir: Path, progress: bool = True,
                   extra_pairs: tuple[tuple[str, str], ...] = ()) -> dict:
    """SFT the organism from scratch on arith's warm-up split (plus `extra_pairs`, e.g. the refusal organism's
    triggered prompts, selfrl/refusal.py); save model + tokenizer to out_dir. Returns stats."""
    from tqdm.auto import tqdm

    from selfrl.evaluate import greedy_accuracy
    from selfrl.tasks.arith import ArithTask

    task = ArithTask()
    pairs = task.sft_examples()
    holdout = [(q, c.rsplit("=", 1)[1]) for q, c in pairs[-256:]]  # stop criterion never looks at val/test
    pairs = pairs[:-256] + list(extra_pairs)
    tokenizer = build_tokenizer()
    model = build_model(spec, len(tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.sft_learning_rate, weight_decay=0.0)
    gen = torch.Generator().manual_seed(spec.seed)
    acc, step = 0.0, 0
    bar = tqdm(range(1, spec.sft_max_steps + 1), desc="organism SFT", disable=not progress)
    model.train()
    for step in bar:
        idx = torch.randint(len(pairs), (spec.sft_batch_size,), generator=gen).tolist()
        loss = model(**_sft_batch(tokenizer, [pairs[i] for i in idx])).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % spec.sft_eval_every == 0:
            acc, _ = greedy_accuracy(model, tokenizer, task, holdout, max_new_tokens=12)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
            if acc >= spec.target_accuracy:
                break
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stats = {"sft_steps": step, "holdout_accuracy": acc, "parameters": sum(p.numel() for p in model.parameters()),
             "spec": asdict(spec)}
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
