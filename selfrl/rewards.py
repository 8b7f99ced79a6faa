"""selfrl's label-free rewards as reward functions for TRL's GRPOTrainer (`reward_funcs=[...]`).

Each is a callable `(prompts, completions, **kwargs) -> list[float]`, one reward per completion, with a `__name__`
(TRL logs each reward under it):

    MajorityVoteReward(task)               1 when a completion's answer matches its prompt's majority answer (SRT, TTRL)
    PooledVoteReward(task)                 the same vote, with extra voters per prompt (M-GRPO's momentum model)
    SelfCertaintyReward(model, tokenizer)  mean self-certainty KL(U ‖ p) of the completion's tokens (Intuitor)

Completions are plain strings or, for a conversational dataset, lists of {"role", "content"} messages; prompts
likewise. TRL repeats each prompt `num_generations` times in a batch: a prompt's group is every completion whose
prompt is identical, in whatever order the rows come. The vote covers the completions of one call: with several
processes TRL calls each process's reward functions on that process's completions only, so a group split across
processes would be voted in parts (single-process runs, as in examples/trl_reward.py, always see whole groups).

No gold answer reaches these rewards. TRL passes every other dataset column as a keyword argument (a `solution` or
`answer` column included); the callables never read them (tests/test_rewards.py poisons them and checks the rewards
do not move).
"""
from __future__ import annotations

import json

import torch

from selfrl import core
from selfrl.errors import ConfigError, TaskError


def completion_text(completion) -> str:
    """The text of a completion: a string as is; a conversational completion (a list of messages, each with a
    "content" string or a list of {"type": "text", "text": ...} parts) as its messages' text joined by newlines."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, dict) for m in completion):
        texts = []
        for m in completion:
            content = m.get("content", "")
            if isinstance(content, list):  # multimodal-style parts: only the text parts carry an answer
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            if not isinstance(content, str):
                raise TaskError(f"completion message content must be text, got {type(content).__name__}")
            texts.append(content)
        return "\n".join(texts)
    raise TaskError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def prompt_groups(prompts: list) -> list[list[int]]:
    """Row indices of each distinct prompt, in order of first appearance (a conversational prompt compares by its
    messages)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        key = p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _vote(task, prompts: list, completions: list, extra: list[list] | None,
          ties_to_extra: bool = False) -> list[float]:
    """r_i = 1[answer_i ≡ the majority answer of its group's pool]; the pool is the group's completions plus
    `extra[g]` for group g (methods.md §0, §1: the extra voters vote but get no reward). A tie goes to the class
    seen first, reading from the group's completions, or from the extra voters when `ties_to_extra`."""
    if len(prompts) != len(completions):
        raise TaskError(f"{len(prompts)} prompts but {len(completions)} completions; expected one prompt per completion")
    texts = [completion_text(c) for c in completions]
    out = [0.0] * len(completions)
    for g, rows in enumerate(prompt_groups(prompts)):
        voters = [texts[i] for i in rows] + ([completion_text(c) for c in extra[g]] if extra else [])
        first = len(rows) if ties_to_extra and extra else 0
        answers, label, _ = core.vote_texts(voters, task.extract_answer, task.is_equivalent, first=first)
        for i, r in zip(rows, core.match_rewards(answers[: len(rows)], label, task.is_equivalent)):
            out[i] = r
    return out


class MajorityVoteReward:
    """1.0 for a completion whose answer (task.extract_answer) is equivalent (task.is_equivalent) to the most common
    answer among its prompt's completions, else 0.0; no answer, or no answer in the whole group, is 0.0."""

    def __init__(self, task, name: str = "majority_vote"):
        self.task, self.__name__ = task, name

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        # kwargs: TRL's dataset columns (gold answers among them), completion_ids, trainer_state: none is read.
        return _vote(self.task, prompts, completions, None)


class PooledVoteReward:
    """The majority vote over a prompt's completions pooled with extra voters, e.g. M-GRPO's momentum-model samples
    (methods.md §1); only the completions being trained are rewarded.

    The extra voters come as the keyword argument `voter_completions`: one list of completions per row, the same
    list on every row of one prompt (TRL repeats per-prompt columns that way). Without it this is
    MajorityVoteReward. TRL does not generate them; wrap the call, e.g.
    `lambda prompts, completions, **kw: pooled(prompts, completions, voter_completions=momentum(prompts))`
    (examples/trl_reward.py).

    `vote_ties` is selfrl's trainer option of that name: "policy" (default) gives a tied vote to the class the
    completions being trained show first; "momentum" gives it to the extra voters' (so a tie never hands the label to
    the policy's own answer)."""

    def __init__(self, task, name: str = "pooled_vote", vote_ties: str = "policy"):
        if vote_ties not in ("policy", "momentum"):
            raise ConfigError(f"vote_ties: expected 'policy' or 'momentum', got {vote_ties!r}")
        self.task, self.__name__, self.vote_ties = task, name, vote_ties

    def __call__(self, prompts: list, completions: list, voter_completions: list | None = None,
                 **kwargs) -> list[float]:
        extra = None
        if voter_completions is not None:
            if len(voter_completions) != len(prompts):
                raise TaskError(f"voter_completions: {len(voter_completions)} rows for {len(prompts)} prompts; "
                                "expected one list of voter completions per row")
            extra = []
            for rows in prompt_groups(prompts):
                first = voter_completions[rows[0]]
                if any(voter_completions[i] != first for i in rows[1:]):
                    raise TaskError(f"voter_completions: rows {rows[0]} and the others of the same prompt carry "
                                    "different voters; give every row of a prompt the same list")
                extra.append(list(first))
        return _vote(self.task, prompts, completions, extra, ties_to_extra=self.vote_ties == "momentum")


class SelfCertaintyReward:
    """Intuitor's reward (methods.md §3): the mean over a completion's tokens of KL(Uniform ‖ p), p the scoring
    model's next-token distribution at `temperature` (core.self_certainty), computed without gradient.

    TRL gives reward functions no logits, so this scores prompt + completion again under `model`: one extra
    forward pass without grad per call, each distinct prompt prefilled once and shared by its completions
    (rollout.score, the trainer's own scorer), at most `batch_size` completions at a time (memory: batch_size ×
    completion length × vocabulary logits). Pass the policy being trained (TRL's `model`) and GRPOConfig's
    temperature: a frozen scorer gets reward-hacked (Intuitor, longer outputs). The completion's tokens are
    `completion_ids` when TRL passes them (the sampled tokens, EOS included), else the completion text re-encoded.
    A conversational prompt is rendered with the tokenizer's chat template, as TRL renders it for generation."""

    def __init__(self, model, tokenizer, temperature: float = 1.0, batch_size: int = 8,
                 name: str = "self_certainty"):
        self.model, self.tokenizer, self.temperature, self.batch_size = model, tokenizer, temperature, batch_size
        self.__name__ = name

    def _prompt_ids(self, prompt) -> list[int]:
        text = prompt if isinstance(prompt, str) else self.tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template holds its special tokens
        if not ids:
            raise TaskError("SelfCertaintyReward: an empty prompt has no next-token distribution to score")
        return ids

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                 **kwargs) -> list[float]:
        from selfrl.rollout import Rollouts, score

        if completion_ids is None:
            completion_ids = [self.tokenizer(completion_text(c), add_special_tokens=False)["input_ids"]
                              for c in completions]
        if not (len(prompts) == len(completions) == len(completion_ids)):
            raise TaskError(f"{len(prompts)} prompts, {len(completions)} completions and {len(completion_ids)} "
                            "completion_ids; expected one of each per completion")
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        was_training = self.model.training
        self.model.eval()  # no dropout in the score
        out = [0.0] * len(completions)
        chunks, chunk = [], []
        for rows in prompt_groups(prompts):  # whole groups per chunk, so a prompt's prefill is shared
            if chunk and len(chunk) + len(rows) > self.batch_size:
                chunks.append(chunk)
                chunk = []
            chunk = chunk + rows
        chunks += [chunk] if chunk else []
        try:
            for rows in chunks:
                p_ids = [self._prompt_ids(prompts[i]) for i in rows]
                c_ids = [list(completion_ids[i]) for i in rows]
                P, T = max(map(len, p_ids)), max(1, max(map(len, c_ids)))
                ids = torch.full((len(rows), P + T), pad, dtype=torch.long)  # (n, P+T) prompt left-, completion right-padded
                mask = torch.zeros((len(rows), P + T), dtype=torch.long)
                for j, (p, c) in enumerate(zip(p_ids, c_ids)):
                    ids[j, P - len(p) : P + len(c)] = torch.tensor(p + c, dtype=torch.long)
                    mask[j, P - len(p) : P + len(c)] = 1
                batch = Rollouts(ids.to(device), mask.to(device), mask[:, P:].to(device), P, [""] * len(rows))
                number: dict[tuple, int] = {}  # rows with identical prompt tokens share one prefill
                prompt_of = torch.tensor([number.setdefault(tuple(p), len(number)) for p in p_ids], device=device)
                _, _, certainty = score(self.model, batch, self.temperature, prompt_of)  # (n, T)
                means = core.masked_mean(certainty.float(), batch.response_mask.float(), dim=1)  # (n,)
                for i, m in zip(rows, means.tolist()):
                    out[i] = m
        finally:
            self.model.train(was_training)
        return out
