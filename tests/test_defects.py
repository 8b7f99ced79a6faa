"""Defects from the correctness review (issue 21): each test fails on the code before its fix."""
from __future__ import annotations

import pytest
import torch

from selfrl.errors import SelfRLError
from selfrl.evaluate import greedy_accuracy
from selfrl.logger import MetricsLogger, read_metrics
from selfrl.rollout import inverse_cdf


def test_inverse_cdf_keeps_intervals_narrower_than_float32_spacing():
    # p = [0.75, q, q, q, q] with q = 2^-26: the exact CDF is 0.75 + i*q for token i. Near 0.75 float32 values are
    # 2^-24 = 4q apart, so a float32 CDF stores 0.75 + q and 0.75 + 2q as 0.75 (round to nearest, ties to even) and
    # 0.75 + 3q as 0.75 + 4q: tokens 1 and 2 would get empty intervals (never drawn) and token 3 three times its
    # share. A 150k vocabulary is full of such probabilities. u at the centre of token i's interval,
    # (0.75 + (i - 1/2) q) / total, must draw token i.
    q = 2.0**-26
    p = torch.tensor([[0.75, q, q, q, q]], dtype=torch.float32).repeat(4, 1)  # exact in float32, as the sampler's
    total = 0.75 + 4 * q
    u = torch.tensor([(0.75 + (i - 0.5) * q) / total for i in (1, 2, 3, 4)], dtype=torch.float64)
    assert inverse_cdf(p, u).tolist() == [1, 2, 3, 4]


def _metrics(tmp_path, text: str | bytes):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(text if isinstance(text, bytes) else text.encode())
    return run


def test_read_metrics_names_the_file_and_line_of_a_damaged_row(tmp_path):
    with pytest.raises(SelfRLError, match=r"metrics.jsonl not found: not a run directory"):
        read_metrics(tmp_path)
    # line 2 of 3 is cut short: not the crash-mid-write case (a whole line follows it), so the file is damaged
    run = _metrics(tmp_path, '{"step": 0}\n{"step": 1, "a\n{"step": 2}\n')
    with pytest.raises(SelfRLError, match=r"metrics.jsonl line 2: not valid JSON \(.*\); the file is damaged$"):
        read_metrics(run)


@pytest.mark.parametrize("line", ['[1, 2]', '{"reward/pseudo": 0.5}', '{"step": "3"}', '{"step": true}'])
def test_read_metrics_refuses_a_row_that_is_not_a_metrics_row(tmp_path, line):
    run = _metrics(tmp_path, '{"step": 0}\n' + line + "\n")
    with pytest.raises(SelfRLError, match=r"line 2: not a metrics row"):
        read_metrics(run)


def test_read_metrics_refuses_bytes_that_are_not_utf8(tmp_path):
    run = _metrics(tmp_path, b'{"step": 0}\n\xff\xfe\n')  # 0xff never occurs in UTF-8; it is byte 12 (from 0)
    with pytest.raises(SelfRLError, match=r"not UTF-8 text \(byte 12\)"):
        read_metrics(run)


def test_read_metrics_drops_a_last_line_cut_short_with_a_warning(tmp_path, caplog):
    # A crash mid-write leaves an unparseable last line with no newline after it: resume must go on from there.
    run = _metrics(tmp_path, '{"step": 0, "x": 1}\n{"step": 1, "x": 2}\n{"step": 2, "reward/pse')
    assert read_metrics(run) == [{"step": 0, "x": 1}, {"step": 1, "x": 2}]
    assert "dropping a partial last line 3" in caplog.text
    # Resuming from step 1 rewrites the file without it; the resumed step is then logged after the whole lines.
    logger = MetricsLogger(run, "none", truncate_after=1)
    logger.log(2, {"x": 3})
    logger.close()
    assert (run / "metrics.jsonl").read_text() == '{"step": 0, "x": 1}\n{"step": 1, "x": 2}\n{"step": 2, "x": 3}\n'


def test_accuracy_over_zero_examples_is_an_error_not_zero():
    # No model is touched before the check: an empty split (or --limit 0) must not print "accuracy 0.0000".
    with pytest.raises(SelfRLError, match=r"^accuracy over zero examples: nothing to score"):
        greedy_accuracy(None, None, None, [], max_new_tokens=4)


def test_accuracy_is_the_share_of_equivalent_answers(tiny_model_dir):
    # 3 examples under a task whose answer is the whole completion: the gold of the first is the model's own greedy
    # completion and the other two are "\x00", which no completion is, so the share is 1/3 whatever the model writes.
    from types import SimpleNamespace

    from selfrl.models import load_model

    model, tok = load_model(str(tiny_model_dir), torch.device("cpu"))
    task = SimpleNamespace(format_prompt=lambda q: q, extract_answer=lambda t: t, is_equivalent=lambda a, b: a == b)
    qs = ["47+85+19=", "10+20+30=", "11+22+33="]
    first = greedy_accuracy(model, tok, task, [(q, "\x00") for q in qs], max_new_tokens=12)[1][0]
    examples = [(qs[0], first), (qs[1], "\x00"), (qs[2], "\x00")]
    acc, texts = greedy_accuracy(model, tok, task, examples, max_new_tokens=12)
    assert acc == pytest.approx(1 / 3) and texts[0] == first


def _save_tiny(tmp_path, config) -> str:
    """A randomly initialised tiny model of `config` with the organism's tokenizer, saved as a model directory."""
    from transformers import AutoModelForCausalLM

    from selfrl.organism import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_load_model_disables_dropout(tmp_path, arch):
    # Qwen2 applies attention dropout functionally from a float copied from its config; GPT-2 has nn.Dropout modules.
    # With dropout 0.5 left on, two train-mode passes over the same tokens differ; with it off, a train-mode pass is
    # the eval-mode pass (the policy samples in train mode, the momentum and reference models run in eval mode).
    from transformers import GPT2Config, Qwen2Config

    from selfrl.models import load_model

    config = (Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.5, eos_token_id=1,
                          pad_token_id=0)
              if arch == "qwen2" else
              GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5,
                         summary_first_dropout=0.5, eos_token_id=1, pad_token_id=0))
    path = _save_tiny(tmp_path, config)
    model, _ = load_model(path, torch.device("cpu"))
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        model.train()
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
        model.eval()
        c = model(input_ids=ids).logits
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not [k for k, v in model.config.to_dict().items() if "dropout" in k and isinstance(v, float) and v != 0]
    if arch == "gpt2":
        drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert drops and all(m.p == 0 for m in drops)  # the modules were found, not merely absent
