"""The RL loop's flat configuration (selfrl/grpo.py), loaded by the generic loader in selfrl/config.py.

Defaults are the M-GRPO paper's (arXiv 2512.13070, methods.md §1) unless a field says otherwise. Option names
follow TRL's GRPOConfig where TRL has the same option (`num_generations`, `temperature`, `beta`, `epsilon`,
`learning_rate`, ...); options TRL lacks take the paper's names (`ema_decay`, `num_momentum_generations`, `iqr_k`).
Every size a step uses is derived once, here (`Config.sizes`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from selfrl import config
from selfrl.errors import ConfigError
from selfrl.logger import parse_report_to


class Sizes(NamedTuple):
    """A step's sizes, in the one shape vocabulary every module uses (docs/architecture.md)."""

    B: int  # prompts per step (on this process: prompts_per_step / processes)
    G: int  # pooled voters per prompt: the policy's samples and the momentum model's
    M: int  # policy rollouts per prompt that are trained (the first M of the policy's G - N samples)
    N: int  # momentum rollouts per prompt (mgrpo; 0 otherwise): vote, never trained


METHODS = ("oracle", "srt", "ttrl", "mgrpo", "intuitor", "corewarding")
ANCHORED = ("mgrpo", "corewarding")  # the methods with an EMA copy of the policy (momentum model / teacher)
DETECTOR_ACTIONS = ("off", "alarm", "rollback", "stop")


@dataclass
class Config:
    # --- what to train -------------------------------------------------------------------------------------
    model: str = "organism2"
    """Local path, hub id or .gguf file of a causal LM; "smollm2"; or a built-in CPU model organism: "organism2" (sums, the default), "organism" (arith, v1), "organism:TASK" (any task's sft_examples)."""
    task: str = "sums"
    """Built-in task name ("sums", "arith", "math", "wordarith", "points") or a task file: "path/to/file.py:ClassName" or "package.module:ClassName"."""
    max_train_prompts: int | None = None
    """Train on the task's first this many prompts only (the small-data regime of He et al. 2026; None: all)."""
    train_file: str | None = None
    """Training prompts replacing the task's own: a .jsonl, .parquet or .csv file or a hub dataset id org/name[:split] (the task still formats, extracts and evaluates)."""
    prompt_column: str = "prompt"
    """Column (JSONL: field) of train_file holding the prompt text, e.g. "problem" for MATH."""
    answer_column: str | None = None
    """Column of train_file holding gold answers, read by oracle and diagnostics only (None: "answer" when present)."""
    apply_chat_template: bool | None = None
    """Render each formatted prompt as a user turn of the tokenizer's chat template (None: when it has one; true: required)."""
    method: str = "mgrpo"
    """oracle (RL on gold answers: uses labels), srt, ttrl, mgrpo, intuitor (self-certainty reward) or corewarding (Co-rewarding-II: the EMA teacher's vote) (label-free)."""
    output_dir: str = "runs/run"
    """Run directory: resolved config, metrics.jsonl, TensorBoard events, checkpoints."""
    seed: int = 0
    """Seeds data order, sampling and initialisation; step s samples with seed (seed, s), so resume replays it."""
    seed_per_prompt: bool = False
    """Sample each prompt's rollouts from their own seed (seed, step, place in the data stream), so they do not depend on how a step's prompts are split across processes; always on with several processes."""

    # --- rollouts ------------------------------------------------------------------------------------------
    prompts_per_step: int = 8
    """B: prompts per training step (M-GRPO paper: 8; SRT paper: 16)."""
    num_generations: int = 32
    """G: rollouts per prompt. For mgrpo this is the pooled group, N from the momentum model and G − N from the policy."""
    num_momentum_generations: int | None = None
    """N for mgrpo: rollouts per prompt from the momentum model (default G/4; paper: 8 of 32)."""
    num_votes: int = 64
    """ttrl only: samples that vote; the first `num_generations` of them are trained (TTRL code: 64 / 32)."""
    temperature: float = 1.1
    """Sampling temperature for rollouts (M-GRPO: 1.1; SRT: 1.0; MM-UPT: 0.7)."""
    max_completion_length: int = 3072
    """Maximum response tokens per rollout (M-GRPO paper: 3072)."""

    # --- M-GRPO anchor and filter --------------------------------------------------------------------------
    ema_decay: float = 0.99
    """m: momentum model update θk ← m·θk + (1 − m)·θq after every optimizer step."""
    ema_decay_end: float | None = None
    """mgrpo (ours, opt-in): the momentum model's decay at max_steps, reached from `ema_decay` along a cosine on its
    update rate 1 − m (as Co-rewarding-II anneals its teacher's rate, here rising): e.g. 0.9999 → 0.999 keeps the
    anchor near the start while the learning rate is high and lets it follow the policy as the rate decays. None: a
    constant `ema_decay` (the paper)."""
    iqr_filter: bool = False
    """Drop low-entropy trajectories per prompt (H < Q1 − k·IQR) from the vote and the loss. Opt-in on any voting method."""
    iqr_k: float = 0.75
    """k of the IQR filter (paper: 0.75)."""
    vote_ties: str = "policy"
    """mgrpo: whose answer a tied pooled vote goes to. "policy" (default): the first voter's class, and the pool lists
    the policy's samples first. "momentum" (ours, opt-in): the momentum model's, so a tie never hands the label to
    the policy's own answer (the paper does not say how ties break)."""
    teacher_alpha_start: float = 0.01
    """corewarding: the EMA teacher's update rate α at step 1 (θt ← (1−α)·θt + α·θq); cosine-annealed to teacher_alpha_end (Co-rewarding-II code: 0.01)."""
    teacher_alpha_end: float = 1e-5
    """corewarding: the teacher's update rate at max_steps (Co-rewarding-II code: 1e-5)."""

    # --- SRT's mitigations (arXiv 2505.21444, methods.md §2) ----------------------------------------------------
    offline_labels: bool = False
    """Train against pseudo-labels voted once by the frozen start model over the training prompts (label-free)."""
    curriculum_fraction: float | None = None
    """Keep only this fraction of training prompts, the easiest by the start model's majority share (paper: 1/3; label-free)."""
    start_votes: int | None = None
    """Samples per prompt in the start model's vote for offline_labels / curriculum_fraction (None: num_generations)."""
    online_filter: float | None = None
    """Drop prompts whose majority share is below this and refill the batch from further draws (paper: 0.6; label-free)."""
    online_filter_max_draws: int = 4
    """Most prompt draws of prompts_per_step per step while refilling; a step trains on the prompts that passed."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without a gain on a small LABELLED split, restoring the best (uses labels)."""
    early_stopping_split: str = "stop"
    """Labelled split early stopping reads: its own, never val or test, which report the result (arith: "stop")."""
    early_stopping_examples: int = 40
    """Examples of that split read by early stopping (1% of arith's 4000 training prompts, as in SRT)."""

    # --- label-free collapse detection (issue 3, selfrl/detector.py) -------------------------------------------
    collapse_detector: str = "off"
    """off, alarm (log only), rollback (to the last healthy checkpoint, then continue gentler) or stop (roll back, end)."""
    detector_window: int = 20
    """Steps in the detector's moving averages and in its baseline (the run's first window)."""
    detector_min_signals: int = 2
    """Signals that must fire at once for an alarm (reward jump, majority share, unanimity, entropy, diversity, anchor KL)."""
    detector_every: int = 50
    """Steps between canary checks (selfrl/canary.py): the policy votes on the canary prompts, the detector reads it."""
    detector_canary: int = 128
    """Canary prompts: a fixed sample of the TRAINING prompts (never validation), voted on at each check."""
    detector_samples: int = 8
    """Samples per canary prompt at each check (at the training temperature)."""
    rollback_lr_factor: float = 0.5
    """After a detector rollback, the learning rate is multiplied by this."""
    rollback_ema_decay: float | None = None
    """After a detector rollback, mgrpo's ema_decay becomes this (e.g. 0.995; None: unchanged)."""
    max_rollbacks: int = 3
    """Detector rollbacks allowed; the next alarm rolls back and stops the run."""

    # --- optimisation --------------------------------------------------------------------------------------
    learning_rate: float = 1e-6
    """AdamW learning rate (M-GRPO and SRT papers: 1e-6 for 4B-7B models; the organism needs far more)."""
    lr_scheduler_type: str = "cosine"
    """cosine or constant (M-GRPO: cosine with warm-up)."""
    warmup_ratio: float = 0.1
    """Share of max_steps spent in linear warm-up (M-GRPO: 0.1)."""
    weight_decay: float = 0.0
    """AdamW weight decay (TRL default)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (TRL default)."""
    beta: float = 0.005
    """KL coefficient to the frozen start model, k3 estimator (M-GRPO: 0.005; SRT: 0.001). 0 skips the reference model."""
    epsilon: float = 0.2
    """PPO clip range of the surrogate (GRPO: 0.2)."""
    num_iterations: int = 1
    """Optimizer passes per rollout batch (TRL's name; GRPO's mu). 1: the ratio is 1 and epsilon never acts; more reuse the sampling-time log-probs as the old ones."""
    max_steps: int = 200
    """Training steps (one optimizer update per rollout batch)."""

    # --- evaluation, logging, checkpoints ------------------------------------------------------------------
    eval_every: int = 20
    """Greedy accuracy on the labelled validation split every this many steps (and at step 0)."""
    eval_samples: int = 4
    """k: samples per validation question for val/mean@k and val/maj@k, the M-GRPO paper's evaluation beside greedy (0: greedy only)."""
    eval_temperature: float = 0.8
    """Sampling temperature of val/mean@k and val/maj@k (M-GRPO paper: 0.8)."""
    eval_limit: int | None = None
    """Evaluate on at most this many validation examples (None: all)."""
    eval_batch_size: int = 256
    """Prompts per greedy evaluation batch."""
    save_every: int = 100
    """Checkpoint every this many steps (and at the last step). 0 disables periodic checkpoints."""
    save_total_limit: int | None = 3
    """Keep the newest this many checkpoints plus the pinned ones (best by validation, last healthy); None keeps all."""
    max_skipped_steps: int = 3
    """A step whose loss or gradient is NaN/inf is skipped and logged; this many in a row stop the run."""
    gold_diagnostics: bool = True
    """Log reward/true and reward/label_accuracy from gold training answers, outside the reward path, when the task has them."""
    probes: str | None = None
    """JSONL probe file scored at every evaluation and checkpoint; a checkpoint is promoted only if it passes (None: off)."""
    probe_tolerance: float = 0.05
    """Largest drop of any probe category's score below the start model's that still passes the gate (absolute)."""
    gate_action: str = "continue"
    """On a probe regression at a checkpoint: continue (no promotion), rollback (to the promoted checkpoint) or stop."""
    report_to: str = "tensorboard"
    """tensorboard, wandb, mlflow, a comma list of them, or none; a missing package only warns. metrics.jsonl is always written."""
    progress: bool = True
    """Show progress bars."""

    # --- LoRA through peft (issue 5) ------------------------------------------------------------------------
    use_peft: bool = False
    """Train LoRA adapters on a frozen base (TRL's name); mgrpo's momentum model is then an EMA of the adapters alone."""
    lora_r: int = 16
    """LoRA rank (TRL's ModelConfig default)."""
    lora_alpha: int = 32
    """LoRA alpha (TRL's ModelConfig default)."""
    lora_dropout: float = 0.0
    """LoRA dropout. 0, not TRL's 0.05: rollouts are sampled in train mode, and dropout would make each sample's network differ."""
    lora_target_modules: str | None = None
    """Comma-separated module names, or all-linear (None: peft's default for the architecture, q_proj,v_proj for Qwen2)."""

    # --- vLLM rollouts (issue 5; GPU only, the `vllm` extra) -----------------------------------------------------
    use_vllm: bool = False
    """Sample rollouts with a vLLM engine in this process, re-synced with the policy and the momentum weights every step."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of GPU memory the vLLM engine may take (TRL's colocate default: 0.3); the rest is the trainer's."""
    vllm_max_model_length: int | None = None
    """Longest prompt + response the engine is built for (None: the model's own limit)."""

    # --- hardware ------------------------------------------------------------------------------------------
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    dtype: str = "float32"
    """float32 or bfloat16 for the policy's forward passes. The momentum EMA is always kept in fp32."""
    torch_threads: int | None = None
    """CPU threads for torch (None: torch's default)."""
    fsdp: bool = False
    """Shard the policy, momentum model and reference over the processes (FSDP2, selfrl/fsdp.py), each the same way,
    so the EMA runs on each process's own shards; checkpoints become torch distributed checkpoints that resume on any
    number of processes. Full weights only (LoRA's few trainable weights need no sharding); dtype bfloat16 then
    means bf16 compute with fp32 master weights and gradient reduction."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (memory for compute, HF's own); with fsdp only, whose training pass is one
    plain forward (the KV-cache sharing of the other path needs the cache that checkpointing turns off)."""

    # ---------------------------------------------------------------------------------------------------------
    def n_momentum(self) -> int:
        """N: momentum (mgrpo) or teacher (corewarding) rollouts per prompt; 0 for the other methods."""
        if self.num_momentum_generations is not None and self.method in ANCHORED:
            return self.num_momentum_generations
        return {"mgrpo": self.num_generations // 4, "corewarding": self.num_generations}.get(self.method, 0)

    def anchor_rate_schedule(self) -> tuple[float, float] | None:
        """The EMA copy's update rate 1 − m at step 1 and at max_steps, cosine-annealed between them each step
        (core.cosine_anneal): corewarding's teacher always (Co-rewarding-II's code: 0.01 -> 1e-5), mgrpo's momentum
        model with the opt-in `ema_decay_end`. None: a constant `ema_decay`."""
        if self.method == "corewarding":
            return self.teacher_alpha_start, self.teacher_alpha_end
        if self.method == "mgrpo" and self.ema_decay_end is not None:
            return 1.0 - self.ema_decay, 1.0 - self.ema_decay_end
        return None

    def validate(self) -> "Config":
        """Raise ConfigError naming the first invalid field."""
        if self.method not in METHODS:
            raise ConfigError(f"method: unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.num_generations < 2:
            raise ConfigError(f"num_generations: must be at least 2 for group advantages, got {self.num_generations}")
        if self.method == "mgrpo":
            n = self.n_momentum()
            if n < 1:
                raise ConfigError(
                    f"num_momentum_generations: mgrpo needs at least 1 momentum rollout per prompt, got {n} "
                    f"(num_generations={self.num_generations}); with none it would silently be srt"
                )
            if self.num_generations - n < 2:
                raise ConfigError(
                    f"num_momentum_generations: {n} of num_generations={self.num_generations} leaves fewer than 2 policy rollouts"
                )
        if self.method == "oracle" and self.offline_labels:
            raise ConfigError("offline_labels: oracle trains on gold answers; offline pseudo-labels apply to label-free methods")
        if self.method == "corewarding" and self.offline_labels:
            raise ConfigError("offline_labels: corewarding's labels are its EMA teacher's vote, made every step")
        if self.vote_ties == "momentum" and self.method != "mgrpo":
            raise ConfigError(f"vote_ties: 'momentum' breaks ties in mgrpo's pooled vote; {self.method} pools no "
                              "momentum rollouts with the policy's")
        if self.ema_decay_end is not None and self.method != "mgrpo":
            raise ConfigError(f"ema_decay_end: schedules mgrpo's momentum model; {self.method} has none")
        if self.ema_decay_end is not None and self.rollback_ema_decay is not None:
            raise ConfigError("ema_decay_end: both it and rollback_ema_decay would set the momentum model's decay; "
                              "set one")
        if self.method == "intuitor" and (self.offline_labels or self.online_filter is not None):
            raise ConfigError("offline_labels/online_filter: intuitor's reward is self-certainty, not a vote")
        if self.method == "ttrl" and self.num_votes < self.num_generations:
            raise ConfigError(f"num_votes: {self.num_votes} must be >= num_generations ({self.num_generations}) for ttrl")
        if self.early_stopping_split in ("val", "test"):
            raise ConfigError(f"early_stopping_split: {self.early_stopping_split!r} reports the result; a checkpoint "
                              "picked on it would be judged on the data that picked it (use the task's own split, "
                              "e.g. arith's 'stop')")
        if self.use_vllm and self.seed_per_prompt:
            raise ConfigError("seed_per_prompt: the vLLM engine samples with its own generator; per-prompt seeds "
                              "apply to the HF sampler only (set use_vllm: false)")
        if self.fsdp and self.use_peft:
            raise ConfigError("fsdp: LoRA trains a few adapter weights on a frozen base; shard full-weight training "
                              "only (set use_peft: false, or fsdp: false for LoRA with plain data parallel)")
        if self.gradient_checkpointing and not self.fsdp:
            raise ConfigError("gradient_checkpointing: only with fsdp: true (the unsharded training pass shares each "
                              "prompt's KV cache among its samples, which checkpointing turns off)")
        checks = [  # (field, holds, what it must be): every numeric field has its range (issue 21)
            ("seed", self.seed >= 0, ">= 0"),
            ("num_votes", self.num_votes >= 2, ">= 2"),
            ("num_momentum_generations", self.num_momentum_generations is None or self.num_momentum_generations >= 1,
             ">= 1 or null"),
            ("max_grad_norm", self.max_grad_norm > 0, "> 0 (a negative clip norm flips every update)"),
            ("teacher_alpha_start", 0 <= self.teacher_alpha_start <= 1, "in [0, 1]"),
            ("teacher_alpha_end", 0 <= self.teacher_alpha_end <= 1, "in [0, 1]"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("prompts_per_step", self.prompts_per_step >= 1, ">= 1"),
            ("max_completion_length", self.max_completion_length >= 1, ">= 1"),
            ("temperature", self.temperature > 0, "> 0"),
            ("ema_decay", 0.0 <= self.ema_decay <= 1.0, "in [0, 1]"),
            ("ema_decay_end", self.ema_decay_end is None or 0.0 <= self.ema_decay_end <= 1.0, "in [0, 1] or null"),
            ("iqr_k", self.iqr_k >= 0, ">= 0"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("warmup_ratio", 0.0 <= self.warmup_ratio < 1.0, "in [0, 1)"),
            ("beta", self.beta >= 0, ">= 0"),
            ("epsilon", self.epsilon > 0, "> 0"),
            ("max_steps", self.max_steps >= 1, ">= 1"),
            ("num_iterations", self.num_iterations >= 1, ">= 1"),
            ("max_train_prompts", self.max_train_prompts is None or self.max_train_prompts >= 1, ">= 1 or null"),
            ("eval_samples", self.eval_samples >= 0, ">= 0"),
            ("eval_temperature", self.eval_temperature > 0, "> 0"),
            ("eval_every", self.eval_every >= 1, ">= 1"),
            ("save_every", self.save_every >= 0, ">= 0"),
            ("save_total_limit", self.save_total_limit is None or self.save_total_limit >= 1, ">= 1 or null"),
            ("max_skipped_steps", self.max_skipped_steps >= 1, ">= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("eval_limit", self.eval_limit is None or self.eval_limit >= 1, ">= 1 or null"),
            ("torch_threads", self.torch_threads is None or self.torch_threads >= 1, ">= 1 or null"),
            ("probes", self.probes is None or bool(self.probes.strip()), "a non-empty path or null"),
            ("prompt_column", bool(self.prompt_column.strip()), "a non-empty column name"),
            ("answer_column", self.answer_column is None or (bool(self.answer_column.strip())
                                                             and self.answer_column != self.prompt_column),
             "null or a non-empty column name other than prompt_column"),
            ("probe_tolerance", 0.0 <= self.probe_tolerance <= 1.0, "in [0, 1]"),
            ("curriculum_fraction", self.curriculum_fraction is None or 0 < self.curriculum_fraction <= 1, "in (0, 1] or null"),
            ("start_votes", self.start_votes is None or self.start_votes >= 1, ">= 1 or null"),
            ("online_filter", self.online_filter is None or 0 < self.online_filter <= 1, "in (0, 1] or null"),
            ("online_filter_max_draws", self.online_filter_max_draws >= 1, ">= 1"),
            ("early_stopping_patience", self.early_stopping_patience is None or self.early_stopping_patience >= 1,
             ">= 1 or null"),
            ("early_stopping_examples", self.early_stopping_examples >= 1, ">= 1"),
            ("detector_window", self.detector_window >= 2, ">= 2"),
            ("detector_min_signals", self.detector_min_signals >= 1, ">= 1"),
            ("detector_every", self.detector_every >= 1, ">= 1"),
            ("detector_canary", self.detector_canary >= 1, ">= 1"),
            ("detector_samples", self.detector_samples >= 2, ">= 2"),
            ("rollback_lr_factor", 0 < self.rollback_lr_factor <= 1, "in (0, 1]"),
            ("rollback_ema_decay", self.rollback_ema_decay is None or 0 <= self.rollback_ema_decay <= 1, "in [0, 1] or null"),
            ("max_rollbacks", self.max_rollbacks >= 0, ">= 0"),
            ("lora_r", self.lora_r >= 1, ">= 1"),
            ("vllm_gpu_memory_utilization", 0 < self.vllm_gpu_memory_utilization < 1, "in (0, 1)"),
            ("vllm_max_model_length", self.vllm_max_model_length is None or self.vllm_max_model_length >= 2, ">= 2 or null"),
            ("lora_alpha", self.lora_alpha >= 1, ">= 1"),
            ("lora_dropout", 0.0 <= self.lora_dropout < 1.0, "in [0, 1)"),
        ]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name}: must be finite, got {v!r}")
        for name, ok, must in checks:
            if not ok:
                raise ConfigError(f"{name}: must be {must}, got {getattr(self, name)!r}")
        choices = {
            "lr_scheduler_type": ("cosine", "constant"),
            "device": ("auto", "cpu", "cuda"),
            "dtype": ("float32", "bfloat16"),
            "gate_action": ("continue", "rollback", "stop"),
            "collapse_detector": DETECTOR_ACTIONS,
            "vote_ties": ("policy", "momentum"),
        }
        try:
            parse_report_to(self.report_to)
        except ValueError as e:
            raise ConfigError(f"report_to: {e}") from None
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        return self

    def validate_processes(self, n: int) -> None:
        """Raise ConfigError naming the first field that `n` processes cannot run."""
        if n == 1:
            return
        if self.prompts_per_step % n:
            raise ConfigError(f"prompts_per_step: {self.prompts_per_step} is not divisible by the {n} processes "
                              "(each process takes an equal share of every step's prompts)")
        # The options that decide from a whole step's or run's votes (online_filter, offline_labels, curriculum,
        # probes, early stopping, detector rollback/stop) make those decisions from every process's votes or on
        # process 0 and hand them to all (selfrl/grpo.py, selfrl/run.py), so they run on any number of processes.
        # use_vllm: every process runs its own engine (TRL's colocate mode), synced from its whole policy and then
        # momentum weights each step (selfrl/vllm_backend.py)

    def sizes(self, processes: int = 1) -> Sizes:
        """B, G, M, N of a step on one of `processes` processes (ttrl: G = num_votes policy samples, M trained)."""
        N = self.n_momentum()
        # mgrpo pools G = num_generations (N of them the momentum model's); corewarding's policy samples all
        # num_generations and its teacher N more, which alone vote (Co-rewarding-II)
        M = self.num_generations - N if self.method == "mgrpo" else self.num_generations
        G = (self.num_votes if self.method == "ttrl" else M) + N
        return Sizes(self.prompts_per_step // processes, G, M, N)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        config.save(self, path)


def load_config(path: str | Path | None = None, sets: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- --set pairs, then validated."""
    return config.load(Config, path, sets)


def apply_overrides(cfg: Config, overrides: dict, source: str) -> Config:
    return config.apply_overrides(cfg, overrides, source)


def field_docs() -> dict[str, str]:
    return config.field_docs(Config)


__all__ = ["Config", "Sizes", "load_config", "apply_overrides", "METHODS"]
