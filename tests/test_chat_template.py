"""apply_chat_template: a chat model's prompts are rendered as a user turn of its tokenizer's chat template."""
from __future__ import annotations

import shutil

import pytest

from selfrl.grpo_config import load_config
from selfrl.errors import ModelError
from selfrl.organism import build_tokenizer
from selfrl.tasks import ChatTemplateTask, load_task, render_prompt, use_chat_template, with_chat_template
from tests.conftest import tiny_sets

# Only characters of the organism's character-level vocabulary ("0123456789+-*=,;# "), so a rendered prompt encodes
# without <unk>: a user turn is "#<content>;", the generation prompt a trailing "=".
TEMPLATE = "{% for m in messages %}#{{ m['content'] }};{% endfor %}{% if add_generation_prompt %}={% endif %}"


def chat_tokenizer():
    tok = build_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def test_render_prompt_is_the_user_turn_with_the_generation_prompt():
    tok = chat_tokenizer()
    assert render_prompt(tok, "12+34+56=", True) == "#12+34+56=;="  # "#" + content + ";" + "="
    assert render_prompt(tok, "12+34+56=", False) == "12+34+56="
    ids = tok("#12+34+56=;=", add_special_tokens=False)["input_ids"]
    assert len(ids) == 12 and tok.unk_token_id not in ids  # one known token per character


def test_auto_uses_the_template_only_when_there_is_one():
    plain, chat = build_tokenizer(), chat_tokenizer()
    assert use_chat_template(plain, None, "m") is False
    assert use_chat_template(chat, None, "m") is True
    assert use_chat_template(chat, False, "m") is False
    with pytest.raises(ModelError, match=r"apply_chat_template: true, but the tokenizer of 'm' has no chat template"):
        use_chat_template(plain, True, "m")


def test_wrapped_task_renders_prompts_and_keeps_everything_else():
    task = load_task("arith")
    assert with_chat_template(task, build_tokenizer(), None, "m") is task  # no template: the task untouched
    chat = with_chat_template(task, chat_tokenizer(), None, "m")
    assert isinstance(chat, ChatTemplateTask)
    assert chat.format_prompt("12+34+56=") == "#" + task.format_prompt("12+34+56=") + ";="
    assert chat.train_prompts() == task.train_prompts()  # unlabelled questions, not rendered: formatting is per use
    assert chat.train_answers() == task.train_answers()
    assert chat.extract_answer("46+56=102") == "102"
    assert chat.eval_examples("val") == task.eval_examples("val")


def test_training_and_evaluation_encode_rendered_prompts(tiny_model_dir, tmp_path, monkeypatch):
    """A 1-step run on a copy of the tiny model with a chat template: every prompt the rollouts and the greedy
    evaluation encode is a rendered one."""
    from transformers import AutoTokenizer

    import selfrl.evaluate
    import selfrl.grpo
    from selfrl.grpo import train

    model = tmp_path / "chat_model"
    shutil.copytree(tiny_model_dir, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(model)
    seen = {"train": [], "eval": []}

    def recording(where, real):
        def encode(tokenizer, prompts, device):
            seen[where] += prompts
            return real(tokenizer, prompts, device)
        return encode

    monkeypatch.setattr(selfrl.grpo, "encode_prompts", recording("train", selfrl.grpo.encode_prompts))
    monkeypatch.setattr(selfrl.evaluate, "encode_prompts", recording("eval", selfrl.evaluate.encode_prompts))
    train(load_config(None, tiny_sets(model, tmp_path / "run", max_steps=1, method="srt")))
    # 4 prompts x 1 step; 16 val examples x 2 evaluations x (greedy + the k samples of val/mean@k, one encode)
    assert len(seen["train"]) == 4 and len(seen["eval"]) == 2 * 16 * 2
    for text in seen["train"] + seen["eval"]:
        assert text.startswith("#") and text.endswith("=;="), text
    seen["train"].clear()
    train(load_config(None, tiny_sets(model, tmp_path / "off", max_steps=1, method="srt", apply_chat_template="false")))
    assert seen["train"] and not any(t.startswith("#") for t in seen["train"])
