"""Loading causal LMs: every model, the organisms included (selfrl/organism.py builds and caches them), is loaded
through `load_model` (AutoTokenizer + AutoModelForCausalLM `from_pretrained` on a local path or hub id)."""
from __future__ import annotations

import logging
import os
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
