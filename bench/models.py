"""The benchmark's models: the built-in organism (trained, cached) and Qwen2 configs of other sizes (random weights,
the organism's character tokenizer), saved with save_pretrained so that both libraries load them from disk alike."""
from __future__ import annotations

from pathlib import Path

# name -> (hidden, intermediate, layers, heads); parameter counts are printed by the benchmark itself
SIZES = {
    "qwen2-5m": (256, 768, 6, 4),
    "qwen2-20m": (384, 1536, 8, 6),
}


def model_dir(name: str) -> str:
    """A local model directory for `name` ("organism" or a key of SIZES), built on first use and cached."""
    from selfrl.organism import cache_dir, organism_path

    if name == "organism":
        return str(organism_path())
    out = cache_dir() / f"bench-{name}"
    if not (out / "config.json").is_file():
        _build(name, out)
    return str(out)


def _build(name: str, out: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from selfrl.organism import build_tokenizer

    hidden, inter, layers, heads = SIZES[name]
    tok = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)


def parameters(path: str) -> int:
    """Exact parameter count, from the config alone (the model is built on the meta device, no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())
