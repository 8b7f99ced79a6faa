"""GeneralPoints post-training from one SFT start: multi-turn GRPO with the verifier's feedback, or more SFT, with
every token the model processes counted (issue 16; "SFT memorizes, RL generalizes", arXiv 2501.17161, methods.md §6).

    selfrl points CONFIG.yaml [--set key=value ...]       # one run: method rl or sft
    selfrl points-study CONFIG.yaml                       # the SFT-vs-RL study (selfrl/lab/points_study.py)

What we keep from the paper
  * Sequential revision (§5, the paper's `verify_iter`): an episode is up to `max_turns` attempts at one hand;
    after a failure the verifier's reasons come back as a user turn ("You failed this trial because ..."), the
    next attempt sees the whole history, and the episode ends at the first correct answer. Its reward is the sum
    of its attempts' rewards (the paper's `running_reward`; selfrl/episodes.py).
  * The reward is the environment's (selfrl/tasks/points.py): +5 correct, -1 legal but wrong, -2 / -3 penalties.
  * The SFT arm trains on the paper's SFT data: solver answers for train hands under the ID rule only.

What we change, and why
  * GRPO over whole episodes instead of the paper's PPO: the group is the G episodes of one hand, the advantage is
    the group-normalised episode reward, and every one of the model's tokens in the episode carries it. This is
    the RL of the rest of selfrl (selfrl/core.py), with no value model to fit on 2 CPU cores.
  * The loss is on the model's own tokens only: `Episode.loss_mask` is 1 on each attempt and its EOS, 0 on the
    prompt and on the verifier's turns. Logits at position t predict token t+1, so the mask used with them is
    the episode mask shifted left by one (`episode_loss`).
  * One update per batch of episodes (the ratio is 1; the clip is kept for correctness), no KL (beta 0), as the
    tiny organism has no pretrained prior worth anchoring to.
  * A truncated attempt (no EOS within `max_completion_length`) is rendered with EOS all the same
    (selfrl/episodes.py renders each attempt + EOS), so its last trained token is one the model did not sample.

Compute is counted in tokens processed: every non-padding token a forward pass runs on (sampling: the prompt once
per generate call, plus each generated token; training: each episode or SFT sequence), and each training token
once more for its backward pass. Evaluation is not counted. The SFT arm stops when it has processed
`compute_budget` tokens, so the two arms can be compared at matched compute (selfrl/lab/points_study.py).

Runs on 1 CPU thread in minutes with the card-game organism (selfrl/points_organism.py); any causal LM loads the
same way through `model_name_or_path`, but the episodes here are rendered plain (the organism's format).
"""
from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from selfrl import config as config_loader
from selfrl import core
from selfrl.episodes import Attempt, Episode, build_episode, conversation, episode_batch, render
from selfrl.errors import ConfigError
from selfrl.logger import MetricsLogger
from selfrl.rollout import encode_prompts, generate
from selfrl.tasks import use_chat_template
from selfrl.tasks.points import MAX_FORMULA_CHARS, REWARD_CORRECT, Hand, PointsTask, extract_formula, prompt_text, score

TURNS_REPORTED = (1, 3, 5)  # success within k attempts, as the study reports it


@dataclass
class PointsConfig:
    """One GeneralPoints post-training run from the card-game organism (or another causal LM directory)."""

    method: str = "rl"
    """'rl' (multi-turn GRPO with the verifier's reward and feedback) or 'sft' (more SFT on ID solver answers)."""
    model_name_or_path: str = "organism"
    """A model directory (an HF causal LM; a chat model plays through its chat template), or 'organism': the cached
    card-game organism warmed up with the two warmup_ fields."""
    apply_chat_template: bool | None = None
    """Render episodes through the tokenizer's chat template (user / assistant turns, the instruction prompt); None:
    when the tokenizer has one. The organism has none: its episodes are plain text with the compact question."""
    warmup_max_steps: int = 1000
    """With model 'organism': its warm-up's SFT steps (selfrl/points_organism.py PointsOrganismSpec.sft_max_steps)."""
    warmup_id_share: float = 0.5
    """With model 'organism': the share of its warm-up pairs under the ID rule (PointsOrganismSpec.id_share)."""
    warmup_target_accuracy: float = 0.5
    """With model 'organism': its warm-up stops at this held-out ID success (PointsOrganismSpec.target_accuracy)."""
    output_dir: str = "runs/points"
    """Run directory: config.yaml, metrics.jsonl, summary.json, final/ (the trained model)."""
    seed: int = 0
    """Seeds the hands drawn, the sampling and the SFT batches."""
    max_steps: int = 16
    """RL: optimizer steps (each on hands_per_step x num_generations episodes)."""
    hands_per_step: int = 4
    """RL: B, hands per step (train split, ID rule)."""
    num_generations: int = 4
    """RL: G, episodes per hand; the group its advantages are normalised in."""
    max_turns: int = 5
    """RL: attempts per episode (the paper's verify_iter); 1 is single-turn RL."""
    max_completion_length: int = 96
    """Tokens per attempt (an answer is ~80 characters)."""
    temperature: float = 1.0
    """RL sampling temperature; the log-probs are taken at the same temperature."""
    learning_rate: float = 2e-4
    """AdamW learning rate of both arms."""
    epsilon: float = 0.2
    """Clip of the surrogate ratio."""
    per_device_train_batch_size: int = 8
    """SFT: pairs per step."""
    sft_per_hand: int = 3
    """SFT: distinct solver answers per train hand (PointsTask.sft_examples)."""
    compute_budget: int = 0
    """SFT: tokens processed (forward + backward) after which it stops; required for method 'sft'."""
    eval_points: int = 2
    """Evaluations during the run, evenly spaced (RL: in steps; SFT: in tokens); the last is the run's end."""
    eval_start: bool = False
    """Also evaluate the start (step 0, 0 tokens); a study evaluates its shared start once instead."""
    eval_hands: int = 64
    """Hands of test_id and of test_ood each evaluation plays (greedy episodes of eval_turns attempts)."""
    eval_turns: int = 5
    """Attempts per evaluation episode; success@k is reported for k in 1, 3, 5 up to this."""
    report_to: str = "none"
    """Metric backends besides metrics.jsonl (selfrl/logger.py)."""
    save_model: bool = True
    """Write the trained model to output_dir/final."""

    def validate(self) -> "PointsConfig":
        if self.method not in ("rl", "sft"):
            raise ConfigError(f"method: 'rl' or 'sft', not {self.method!r}")
        for name in ("max_steps", "hands_per_step", "max_turns", "max_completion_length", "per_device_train_batch_size",
                     "sft_per_hand", "eval_points", "eval_hands", "eval_turns", "warmup_max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ConfigError(f"num_generations: a group needs at least 2 episodes, got {self.num_generations}")
        if self.temperature <= 0 or self.learning_rate <= 0 or self.epsilon <= 0:
            raise ConfigError("temperature, learning_rate and epsilon must be positive")
        if not 0 <= self.warmup_id_share <= 1:
            raise ConfigError(f"warmup_id_share: a share in [0, 1], got {self.warmup_id_share}")
        if self.method == "sft" and self.compute_budget < 1:
            raise ConfigError("compute_budget: method 'sft' needs a token budget (e.g. an RL run's compute/tokens)")
        return self


def load_points_config(path: str | Path | None = None, sets: list[str] | None = None) -> PointsConfig:
    return config_loader.load(PointsConfig, path, sets)


# ------------------------------------------------------------------------------------------------- episodes
def play_episodes(model, tokenizer, hands: list[Hand], max_turns: int, max_new_tokens: int, *, temperature: float = 1.0,
                  greedy: bool = False, first_prompt: Callable[[Hand], str] | None = None,
                  chat: bool = False) -> tuple[list[Episode], int]:
    """Play one episode per hand, all of them turn by turn in one batch (selfrl/episodes.py `run_episode` plays
    one at a time; a batch is what makes this affordable on a CPU). With `chat` every prompt is the conversation so
    far through the chat template, opened for the assistant's next turn. Returns (episodes, tokens processed)."""
    first_prompt = first_prompt or (lambda h: prompt_text(h, "full" if chat else "compact"))
    firsts = [first_prompt(h) for h in hands]
    attempts: list[list[Attempt]] = [[] for _ in hands]
    device, tokens = next(model.parameters()).device, 0
    limit = getattr(model.config, "max_position_embeddings", None)
    for _ in range(max_turns):
        live = [i for i, a in enumerate(attempts) if not (a and a[-1].reward == REWARD_CORRECT)]
        if not live:
            break
        prompts = [render(conversation(firsts[i], attempts[i]), tokenizer, chat)[0] for i in live]
        batch = encode_prompts(tokenizer, prompts, device)
        room = max_new_tokens if limit is None else min(max_new_tokens, limit - batch["input_ids"].shape[1])
        if room < 1:  # the history fills the context: these episodes end here
            break
        out = generate(model, tokenizer, batch, 1, room, temperature=temperature, greedy=greedy)
        tokens += int(batch["attention_mask"].sum()) + int(out.response_mask.sum())
        for i, text in zip(live, out.texts):
            reward, messages = score(hands[i], text)
            attempts[i].append(Attempt(text, reward, messages))
    return [build_episode(h, f, a, tokenizer, chat) for h, f, a in zip(hands, firsts, attempts)], tokens


def solved_within(episode: Episode, k: int) -> bool:
    return any(a.reward == REWARD_CORRECT for a in episode.attempts[:k])


# ------------------------------------------------------------------------------------------------- RL step
def episode_loss(model, batch: dict[str, torch.Tensor], advantages: torch.Tensor, temperature: float,
                 epsilon: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped GRPO surrogate over whole episodes, on the model's own tokens only.
    batch: selfrl/episodes.py `episode_batch` (R = B*G rows, T tokens); advantages (R,)."""
    ids, attn = batch["input_ids"], batch["attention_mask"]  # (R, T)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1] / temperature  # (R, T-1, V) predicts t+1
    logp = core.token_logprobs(logits, ids[:, 1:])  # (R, T-1)
    mask = batch["loss_mask"][:, 1:]  # (R, T-1) token t+1 is the model's own: the verifier's text is never a target
    return core.policy_loss(logp, logp.detach(), advantages, mask, epsilon=epsilon)


def episode_grpo_step(model, tokenizer, optimizer, hands: list[Hand], cfg: PointsConfig,
                      chat: bool = False) -> tuple[dict, int]:
    """One multi-turn GRPO step, top to bottom: play G episodes of each of B hands -> episode rewards -> group
    advantages -> loss on the model's own tokens -> update. Returns (metrics, tokens processed)."""
    B, G = len(hands), cfg.num_generations
    model.eval()
    episodes, tokens = play_episodes(model, tokenizer, [h for h in hands for _ in range(G)], cfg.max_turns,
                                     cfg.max_completion_length, temperature=cfg.temperature, chat=chat)  # row b*G+g
    batch = episode_batch(episodes, tokenizer.pad_token_id)
    rewards = batch["rewards"].view(B, G)  # (B, G)
    advantages = core.group_advantages(rewards, torch.ones_like(rewards, dtype=torch.bool)).view(-1)  # (B*G,)
    model.train()
    loss, metrics = episode_loss(model, batch, advantages, cfg.temperature, cfg.epsilon)
    optimizer.zero_grad(set_to_none=True)
    skipped = not torch.isfinite(loss)
    if not skipped:
        loss.backward()
        optimizer.step()
    model.eval()
    tokens += 2 * int(batch["attention_mask"].sum())  # the training pass: forward and backward
    turns = [len(e.attempts) for e in episodes]
    return {**metrics, "train/skipped": int(skipped), "reward/episode": float(rewards.mean()),
            "reward/first_attempt": sum(e.attempts[0].reward for e in episodes) / len(episodes),
            "reward/group_std": float(rewards.std(dim=1).mean()),  # 0: every group tied, no advantage, no learning
            "episode/solved": sum(e.solved for e in episodes) / len(episodes),
            "episode/turns": sum(turns) / len(turns),
            "episode/trained_tokens": float(batch["loss_mask"].sum())}, tokens


# ------------------------------------------------------------------------------------------------- evaluation
def numbers_used(completion: str) -> list[int] | None:
    """The sorted numbers of a completion's formula (None without one): which values the model gave the cards."""
    formula = extract_formula(completion)
    return None if formula is None else sorted(int(t) for t in re.findall(r"\d+", formula[:MAX_FORMULA_CHARS]))


def rule_reading(hands: list[Hand], completions: list[str]) -> dict:
    """On OOD hands: the share of answers whose numbers are the cards' values under the stated rule (J, Q, K = 11,
    12, 13) and the share whose numbers are their values under the ID rule (all 10), which a model that ignores the
    rule sentence and plays the rule it was trained on would write."""
    used = [numbers_used(c) for c in completions]
    stated = sum(u == sorted(h.values) for h, u in zip(hands, used))
    as_id = sum(u == sorted(Hand(h.ranks).values) for h, u in zip(hands, used))
    return {"ood/numbers_stated_rule": stated / len(hands), "ood/numbers_id_rule": as_id / len(hands)}


def no_rule_prompt(hand: Hand, style: str = "compact") -> str:
    """The question without its rule sentence: a model that ignores the rule answers this as it answers the full
    question (the issue's fallback measurement)."""
    if style == "full":
        full = prompt_text(hand, "full")
        return full.replace(f"Note that {hand.rule}, and each card", "Note that each card")
    return f"Cards: {', '.join(hand.ranks)}.\n"


@torch.no_grad()
def evaluate_points(model, tokenizer, task: PointsTask, n_hands: int, turns: int, max_new_tokens: int,
                    chat: bool = False) -> dict:
    """Greedy success within 1, 3, 5 attempts on test_id and test_ood (gold-free: the verifier scores), the first
    attempt's mean reward, and the rule probe: OOD success with the rule sentence removed and the share of OOD
    first answers identical with and without it."""
    was_training = model.training
    model.eval()
    out = {}
    for split, key in (("test_id", "id"), ("test_ood", "ood")):
        hands = task.hands(split)[:n_hands]
        episodes, _ = play_episodes(model, tokenizer, hands, turns, max_new_tokens, greedy=True, chat=chat)
        for k in TURNS_REPORTED:
            if k <= turns:
                out[f"{key}/success@{k}"] = sum(solved_within(e, k) for e in episodes) / len(episodes)
        out[f"{key}/reward@1"] = sum(e.attempts[0].reward for e in episodes) / len(episodes)
        broken = sum(e.attempts[0].messages == ["no formula found"] for e in episodes)
        out[f"{key}/no_formula@1"] = broken / len(episodes)
        if key == "ood":
            bare, _ = play_episodes(model, tokenizer, hands, 1, max_new_tokens, greedy=True, chat=chat,
                                    first_prompt=lambda h: no_rule_prompt(h, "full" if chat else "compact"))
            out["ood_no_rule/success@1"] = sum(solved_within(e, 1) for e in bare) / len(bare)
            out["ood_no_rule/same_answer"] = sum(a.attempts[0].completion == b.attempts[0].completion
                                                 for a, b in zip(episodes, bare)) / len(bare)
            out.update(rule_reading(hands, [e.attempts[0].completion for e in episodes]))
    model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------------- runs
def load_start(cfg: PointsConfig):
    """(model, tokenizer) of the run's start: the cached card-game organism or a model directory."""
    from selfrl.points_organism import PointsOrganismSpec, load_points_organism, points_organism_path

    if cfg.model_name_or_path == "organism":
        spec = PointsOrganismSpec(sft_max_steps=cfg.warmup_max_steps, id_share=cfg.warmup_id_share,
                                  target_accuracy=cfg.warmup_target_accuracy)
        return load_points_organism(points_organism_path(spec))
    path = Path(cfg.model_name_or_path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model_name_or_path: {path} is not a model directory (no config.json) nor 'organism'")
    return load_points_organism(path)


def _eval_row(model, tokenizer, task, cfg, step: int, tokens: int, seconds: float) -> dict:
    row = evaluate_points(model, tokenizer, task, cfg.eval_hands, cfg.eval_turns, cfg.max_completion_length,
                          chat=task.style == "full")
    return {"eval": 1, "compute/tokens": tokens, "time/train_s": round(seconds, 1), **row}


def train_rl(cfg: PointsConfig, model, tokenizer, task: PointsTask, log: MetricsLogger) -> list[dict]:
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    hands = task.hands("train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    marks = {round(cfg.max_steps * k / cfg.eval_points) for k in range(1, cfg.eval_points + 1)}
    evals, tokens, seconds = [], 0, 0.0
    for step in tqdm(range(1, cfg.max_steps + 1), desc=f"points rl (turns {cfg.max_turns})"):
        t0 = time.perf_counter()
        metrics, used = episode_grpo_step(model, tokenizer, optimizer, rng.sample(hands, cfg.hands_per_step), cfg,
                                          chat=task.style == "full")
        tokens, seconds = tokens + used, seconds + time.perf_counter() - t0
        log.log(step, {**metrics, "compute/tokens": tokens})
        if step in marks:
            evals.append({"step": step, **_eval_row(model, tokenizer, task, cfg, step, tokens, seconds)})
            log.log(step, evals[-1])
    return evals


def sft_schedule(lengths: list[int], cfg: PointsConfig) -> tuple[int, list[int], list[int]]:
    """(steps, cumulative tokens after each step, steps at which to evaluate) of the SFT arm: the batches
    selfrl/sft.py will draw with this seed, replayed, until `compute_budget` tokens (2 per sequence token)."""
    from selfrl.sft import sft_batches  # the same seeded draw sft() makes, so the count is of the real batches

    gen = torch.Generator().manual_seed(cfg.seed)
    cumulative = []
    for idx in sft_batches(len(lengths), cfg.per_device_train_batch_size, gen, 10**9, None):
        cumulative.append((cumulative[-1] if cumulative else 0) + 2 * sum(lengths[i] for i in idx))
        if cumulative[-1] >= cfg.compute_budget:
            break
    marks = sorted({next(s for s, c in enumerate(cumulative, 1) if c >= cfg.compute_budget * k / cfg.eval_points)
                    for k in range(1, cfg.eval_points + 1)})
    return len(cumulative), cumulative, marks


def train_sft(cfg: PointsConfig, model, tokenizer, task: PointsTask, log: MetricsLogger) -> list[dict]:
    from selfrl.sft import sft

    chat = task.style == "full"  # a chat model: the question as a user turn, the answer as the assistant's
    pairs = [(render(conversation(task.format_prompt(q), []), tokenizer, True)[0] if chat else task.format_prompt(q), a)
             for q, a in task.sft_examples(cfg.sft_per_hand, seed=cfg.seed)]
    lengths = [len(tokenizer(p + a, add_special_tokens=False)["input_ids"]) + 1 for p, a in pairs]  # + EOS
    steps, cumulative, marks = sft_schedule(lengths, cfg)
    evals, done, t0 = [], [0], time.perf_counter()

    def evaluate() -> float:  # sft() calls this after every step (eval_every=1); it evaluates at the marks only
        done[0] += 1
        if done[0] in marks:
            seconds = time.perf_counter() - t0
            evals.append({"step": done[0], **_eval_row(model, tokenizer, task, cfg, done[0], cumulative[done[0] - 1],
                                                       seconds)})
            log.log(done[0], evals[-1])
        return evals[-1]["id/success@1"] if evals else float("nan")  # what sft's progress bar shows as acc

    sft(model, tokenizer, pairs, learning_rate=cfg.learning_rate, batch_size=cfg.per_device_train_batch_size,
        max_steps=steps, seed=cfg.seed, evaluate=evaluate, eval_every=1, progress=True, desc="points sft")
    return evals


def train_points(cfg: PointsConfig) -> dict:
    """Run `cfg` (RL or SFT) from its start; write config.yaml, metrics.jsonl, summary.json and final/."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_loader.save(cfg, out / "config.yaml")
    model, tokenizer = load_start(cfg)
    model.eval()
    # a chat model plays the instruction prompt through its template; the organism the compact question, plain
    chat = use_chat_template(tokenizer, cfg.apply_chat_template, cfg.model_name_or_path)
    task = PointsTask(style="full" if chat else "compact")
    log = MetricsLogger(out, cfg.report_to)
    try:
        evals = [{"step": 0, **_eval_row(model, tokenizer, task, cfg, 0, 0, 0.0)}] if cfg.eval_start else []
        if evals:
            log.log(0, evals[0])
        evals += (train_rl if cfg.method == "rl" else train_sft)(cfg, model, tokenizer, task, log)
    finally:
        log.close()
    if cfg.save_model:
        model.save_pretrained(out / "final")
        tokenizer.save_pretrained(out / "final")
    summary = {"config": dataclasses.asdict(cfg), "evals": evals}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")  # written last: a run with summary.json is complete
    return summary

