"""Multi-turn episodes with verifier feedback: GeneralPoints' sequential revision (arXiv 2501.17161, methods.md §6).

An episode is up to `max_turns` attempts at one hand (the paper's `verify_iter` = 5). After a failed attempt the
verifier's reasons come back as a user turn ("You failed this trial because ..."), and the next attempt sees the
whole history; the episode ends at the first correct answer. Its reward is the sum of its attempts' rewards (the
paper's `running_reward`). The paper's environment also answers a 6th call with -1 "step_limit_reached" without
scoring it; here an episode is only its scored attempts.

An episode is rendered in one of two ways:

* plain (character-level models): the first prompt, then each attempt followed by the tokenizer's EOS text, then
  each verifier turn on its own line:
      "Cards: J, 3, 7, 8. J, Q, K count as 10.\\n{...}<eos>You failed this trial because ...\\n{...}<eos>"
* chat (HF chat models): the conversation through the tokenizer's chat template, user / assistant / user / ...

The loss mask is 1 on the model's own tokens only: each attempt's text and the end-of-turn token it emitted
(EOS), never the prompt or the verifier's text. It is computed from character spans: the rendering records where
each attempt lies in the text, and a token counts as the model's when its offsets lie inside such a span (a token
straddling a boundary is never trained on). For chat templates the spans come from rendering each prefix of the
conversation; a template that does not render a conversation as the concatenation of its prefixes (one that drops
earlier turns' reasoning, for example) is refused, since its history would not be the text the model saw.

`run_episode(generate_fn, hand, max_turns)` plays one episode with `generate_fn(prompt_text) -> completion text`
and returns an `Episode` with its token ids, loss mask and total reward, for GRPO over whole episodes (group =
episodes of one hand). The ids are the re-tokenized text; for a character-level tokenizer that is exactly what was
sampled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from selfrl.errors import SelfRLError
from selfrl.tasks.points import REWARD_CORRECT, Hand, feedback, prompt_text, score

MAX_TURNS = 5  # the paper's verify_iter


@dataclass
class Attempt:
    completion: str
    reward: float
    messages: list[str]  # the verifier's reasons


@dataclass
class Episode:
    """One hand played for up to max_turns attempts; `input_ids` and `loss_mask` cover the whole episode."""

    hand: Hand
    attempts: list[Attempt]
    text: str = ""  # the rendered episode
    input_ids: list[int] = field(default_factory=list)  # (T,)
    loss_mask: list[int] = field(default_factory=list)  # (T,) 1 on the model's own tokens

    @property
    def total_reward(self) -> float:
        return sum(a.reward for a in self.attempts)

    @property
    def solved(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].reward == REWARD_CORRECT


def conversation(first_prompt: str, attempts: list[Attempt]) -> list[dict]:
    """The chat messages of an episode so far: the prompt, then each attempt and, after a failure, the verifier."""
    messages = [{"role": "user", "content": first_prompt}]
    for a in attempts:
        messages.append({"role": "assistant", "content": a.completion})
        if a.reward != REWARD_CORRECT:
            messages.append({"role": "user", "content": feedback(a.messages)})
    return messages


def render_plain(messages: list[dict], eos: str) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans of the assistant turns) in the plain format; the text ends where the next attempt would start
    when the last message is a user turn."""
    text, spans = "", []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            spans.append((len(text), len(text) + len(m["content"]) + len(eos)))
            text += m["content"] + eos
        else:
            text += m["content"] if i == 0 else m["content"] + "\n"  # the first prompt carries its own separator
    return text, spans


def render_chat(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans of the assistant turns) through the chat template; with the generation prompt opened when the
    last message is a user turn."""
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)

    text = render(messages, messages[-1]["role"] == "user")
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:k], True))
        content_end = start + len(m["content"])
        if not (text.startswith(render(messages[:k], True)) and text[start:content_end] == m["content"]):
            raise SelfRLError("the chat template does not render a conversation as the concatenation of its turns; "
                              "multi-turn episodes need one that does")
        eos = tokenizer.eos_token or ""
        end = content_end + len(eos) if eos and text.startswith(eos, content_end) else content_end
        spans.append((start, end))
    return text, spans


def render(messages: list[dict], tokenizer, chat: bool) -> tuple[str, list[tuple[int, int]]]:
    return render_chat(tokenizer, messages) if chat else render_plain(messages, tokenizer.eos_token)


def token_mask(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of `text`: mask 1 on tokens lying wholly inside one of `spans` (the model's turns)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(e > s and any(a <= s and e <= b for a, b in spans)) for s, e in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def run_episode(generate_fn: Callable[[str], str], hand: Hand, max_turns: int = MAX_TURNS, *, tokenizer,
                chat: bool = False, style: str | None = None, score_fn=score) -> Episode:
    """Play one episode: prompt, attempt, verifier, attempt, ... until a correct answer or `max_turns` attempts.
    `style` is the first prompt's (selfrl/tasks/points.py `prompt_text`): "full" for chat, "compact" otherwise."""
    if max_turns < 1:
        raise SelfRLError(f"max_turns must be at least 1, got {max_turns}")
    first = prompt_text(hand, style or ("full" if chat else "compact"))
    attempts: list[Attempt] = []
    while len(attempts) < max_turns and not (attempts and attempts[-1].reward == REWARD_CORRECT):
        prompt, _ = render(conversation(first, attempts), tokenizer, chat)
        completion = generate_fn(prompt)
        reward, messages = score_fn(hand, completion)
        attempts.append(Attempt(completion, reward, messages))
    return build_episode(hand, first, attempts, tokenizer, chat)


def build_episode(hand: Hand, first: str, attempts: list[Attempt], tokenizer, chat: bool = False) -> Episode:
    """The played episode's text, token ids and loss mask (1 on the model's own tokens only)."""
    messages = conversation(first, attempts)
    if messages[-1]["role"] == "user":
        messages = messages[:-1]  # the verifier's reply to the last attempt is not part of the episode
    text, spans = render(messages, tokenizer, chat)
    ids, mask = token_mask(tokenizer, text, spans)
    return Episode(hand, attempts, text, ids, mask)


def episode_batch(episodes: list[Episode], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors for a loss over whole episodes: input_ids (B, T), attention_mask (B, T), loss_mask
    (B, T) (the token at t is the model's own; shift by one for next-token log-probs), rewards (B,)."""
    width = max(len(e.input_ids) for e in episodes)
    ids = torch.full((len(episodes), width), pad_id)  # (B, T)
    attn = torch.zeros((len(episodes), width), dtype=torch.bool)  # (B, T)
    mask = torch.zeros((len(episodes), width))  # (B, T)
    for i, e in enumerate(episodes):
        n = len(e.input_ids)
        ids[i, :n], attn[i, :n] = torch.tensor(e.input_ids), True
        mask[i, :n] = torch.tensor(e.loss_mask, dtype=torch.float)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask,
            "rewards": torch.tensor([e.total_reward for e in episodes], dtype=torch.float)}
