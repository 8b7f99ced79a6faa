"""LoRA through peft, with M-GRPO's momentum model held as a second adapter (issue 5; methods.md §1, "ours").

One frozen base carries two LoRA adapters: `default`, the policy (trained), and `momentum`, its EMA (never
trained). The momentum model generates by switching the active adapter, so M-GRPO costs two adapters' weights
rather than a second copy of the base; the KL reference is the base itself, reached with peft's
`disable_adapter()`, so `beta > 0` costs no copy either. Both adapters stay fp32 (peft's default
`autocast_adapter_dtype`), which the EMA needs whatever dtype the base runs in.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from selfrl.errors import ConfigError

POLICY, MOMENTUM = "default", "momentum"  # peft names the first adapter "default"


def add_lora(model, r: int, alpha: int, dropout: float, target_modules: str | None):
    """Wrap `model` in a peft LoRA with a trainable `default` adapter (B = 0: the policy starts as the base)."""
    from peft import LoraConfig, get_peft_model

    targets = None  # peft's per-architecture default (q_proj, v_proj for Llama/Qwen)
    if target_modules:
        targets = "all-linear" if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. a target module name the model does not have
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"lora_target_modules: {first}") from None


def add_momentum_adapter(model) -> None:
    """Add the `momentum` adapter as an exact, frozen copy of the policy adapter; the policy stays active."""
    model.add_adapter(MOMENTUM, model.peft_config[POLICY])
    for ema, src in zip(*adapter_pairs(model)):
        ema.data.copy_(src.data)
    model.set_adapter(POLICY)  # peft: makes `default` trainable and every other adapter frozen


def adapter_state(model, name: str) -> dict[str, torch.Tensor]:
    """The live parameters of adapter `name`, by parameter name (the tensors themselves, not copies)."""
    tag = f".{name}."
    return {k: p for k, p in model.named_parameters() if tag in k and "lora_" in k}


def adapter_pairs(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(momentum tensors, policy tensors) in matching order: the EMA's targets and sources."""
    policy = adapter_state(model, POLICY)
    momentum = adapter_state(model, MOMENTUM)
    names = sorted(policy)
    return [momentum[n.replace(f".{POLICY}.", f".{MOMENTUM}.")] for n in names], [policy[n] for n in names]


@contextlib.contextmanager
def active_adapter(model, name: str):
    """Run the block with adapter `name` active (frozen), then make the policy adapter active and trainable again."""
    model.set_adapter(name, inference_mode=True)
    try:
        yield model
    finally:
        model.set_adapter(POLICY)


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def base_of(adapter_dir: str | Path) -> str:
    """The base model path an adapter directory was trained on (peft writes it into adapter_config.json)."""
    import json

    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]


def merge(base_model, adapter_dir: str | Path):
    """The base with the adapter of `adapter_dir` merged in: a plain transformers model (export, eval)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
