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
        if Path(path).exists():
            raise ModelError(f"model path {path} is a file, not a model directory (save_pretrained) or .gguf file")
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
        if looks_local and _plain_fast_tokenizer(Path(path)):
            # A tokenizer saved as a plain `tokenizers` one (the organisms' character-level tokenizer, selfrl/organism.py
            # and every checkpoint of them): AutoTokenizer would read it back as the architecture's own (Qwen2's
            # byte-level pre-tokenizer), which drops letters and spaces instead of encoding them.
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
        model = _from_shards(path, dtype) if looks_local else None
        if model is None:
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
    disable_dropout(model)
    return model.to(device), tokenizer


def _from_shards(path: str, dtype: str):
    """A sharded (fsdp) checkpoint's policy directory (its config and tokenizer; the weights in ../shards, a torch
    distributed checkpoint) as one whole model, or None for any other directory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from selfrl.checkpoint import _load_policy_state, is_sharded_policy

    if not is_sharded_policy(Path(path)):
        return None
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(_load_policy_state(Path(path)), strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):  # a tied lm_head may be absent
        raise ModelError(f"{path}: its shards do not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    return model


_DROPOUTS = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout,
             torch.nn.FeatureAlphaDropout)


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout of `model` set to 0, as TRL's `disable_dropout_in_model` does: the policy samples and is scored
    in train mode while the momentum and reference models run in eval mode, so with dropout the IQR pool would
    compare entropies of unlike networks and each rollout would come from a different random sub-network.
    Besides nn.Dropout modules (TRL's case), transformers' attention applies dropout functionally from a float
    attribute copied from the config at init (Qwen2's `attention_dropout`), and the config's *dropout* fields are
    what save_pretrained writes: all three are zeroed."""
    from transformers import PretrainedConfig

    def zero_fields(obj) -> None:
        for name, value in list(vars(obj).items()):
            if "dropout" in name and isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(obj, name, 0.0)

    for module in model.modules():
        if isinstance(module, _DROPOUTS):
            module.p = 0.0
        zero_fields(module)
    configs = [model.config]
    while configs:  # the model's config and its sub-configs (a multimodal model's text_config, ...)
        config = configs.pop()
        zero_fields(config)
        configs += [v for v in vars(config).values() if isinstance(v, PretrainedConfig)]


def _plain_fast_tokenizer(path: Path) -> bool:
    """Whether the directory's tokenizer was saved as a plain fast tokenizer (no model-specific class)."""
    import json

    cfg = path / "tokenizer_config.json"
    try:
        cls = json.loads(cfg.read_text()).get("tokenizer_class") if cfg.is_file() else None
    except (OSError, ValueError):
        return False
    return cls in ("TokenizersBackend", "PreTrainedTokenizerFast")
