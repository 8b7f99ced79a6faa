"""selfrl's trainer: momentum-anchored GRPO (M-GRPO) and the majority-vote family it stabilises.

What we keep from the M-GRPO paper (arXiv 2512.13070, methods.md §1)
  * A momentum model θk, an EMA of the policy θq (decay 0.99, fp32, once per optimizer step, after the step),
    generates N = G/4 of the G rollouts per prompt from its *current* weights every step; the policy generates
    M = G − N. Both vote for the pseudo-label; only the policy's rollouts are rewarded and trained.
  * The IQR filter (`iqr_filter`): per prompt, trajectories whose mean token entropy is below Q1 − 0.75·IQR
    leave the vote, the group statistics and the loss.
  * GRPO: group-normalised advantages, token-mean clipped surrogate (clip 0.2), k3 KL to the start model (0.005),
    AdamW with cosine schedule and 10% warm-up.

What we change, and why
  * The authors' public code comments out the momentum rollouts, has no IQR filter and lets gold labels reach the
    reward. We implement the paper: here gold answers never enter a label-free reward. The loop gets unlabelled
    prompts from `task.train_prompts()`; gold answers are read by the `oracle` reward (clearly a labelled method)
    and by `GoldAudit`, which only logs diagnostics after the update.
  * Entropy H(y) is the mean over response tokens (padding excluded) of the generating model's entropy at the
    sampling temperature; the paper does not define it.
  * One optimizer update per rollout batch, so the "old" log-probs are the current ones (ratio 1): we do not
    recompute them. No reference model is built when beta == 0.
  * A step whose loss or gradient is NaN/inf is skipped (no optimizer, scheduler or EMA update) and logged as
    `train/skipped`; `max_skipped_steps` in a row stop the run (issue 6, docs/reliability.md).
  * LoRA (`use_peft`, selfrl/lora.py): the momentum model is an EMA of the adapters alone, a second adapter on
    the shared frozen base that generates by switching adapters; the KL reference is the base with adapters off.
  * vLLM rollouts (`use_vllm`, selfrl/vllm_backend.py): one engine, loaded with the policy's and then the momentum
    model's current weights before each one's rollouts, every step (a stale momentum engine would be SRT).
  * Misevolution gate (issue 7, methods.md §8; selfrl/safety.py, docs/safety.md): with `probes` set, a frozen,
    hashed probe file is scored at every evaluation and checkpoint, and a checkpoint is promoted only when no
    probe category fell more than `probe_tolerance` below the start model's score; `gate_action` says what a
    regression does (continue, rollback, stop).

The same loop runs `oracle` (gold reward: the ceiling), `srt` (vote over the policy's own G samples), `ttrl`
(vote over `num_votes`, train on the first `num_generations`) and `mgrpo`.

Launching
  * 1 CPU:   selfrl train examples/my_task.yaml               (or `selfrl demo` for the built-in comparison)
  * 1 GPU:   selfrl train my.yaml --set device=cuda --set dtype=bfloat16
  * N processes, data parallel (selfrl/distributed.py, README "Many processes"):
        accelerate launch --multi_gpu --num_processes N -m selfrl train my.yaml
    one GPU per process (NCCL), or CPU processes (gloo) where there is no GPU or device=cpu; several nodes with
    --num_machines / --machine_rank / --main_process_ip and output_dir on a filesystem every node sees. Each process
    holds the whole policy, momentum and reference model and takes prompts_per_step / N of every step's prompts with
    all their samples, so each vote is local; the token-mean's denominator is the global token count and gradients
    are summed, so the update is the 1-process one, and every process applies it and the same EMA. Prompts sample
    from their own seeds (`seed_per_prompt`), so the rollouts do not depend on N. Process 0 alone logs, prints and
    writes checkpoints; validation is split across the processes. DeepSpeed and FSDP (sharded parameters) are
    refused, and so are the options that decide from a whole step's votes or write run files (online_filter,
    offline_labels, curriculum_fraction, probes, early stopping, detector rollback/stop): they run on 1 process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from selfrl import core, lora, vllm_backend
from selfrl import distributed as dist
from selfrl.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, meta_value, prune_checkpoints,
                               read_pointers, save_checkpoint, set_pointer, step_dir, verify_checkpoint)
from selfrl.config import Config
from selfrl.data import TrainFileTask
from selfrl.errors import SelfRLError, TaskError
from selfrl.evaluate import greedy_accuracy
from selfrl.detector import CollapseDetector
from selfrl.logger import MetricsLogger, NullLogger, read_metrics
from selfrl.mitigations import easiest, start_model_votes
from selfrl.models import load_model
from selfrl.organism import organism_path
from selfrl.rollout import Rollouts, cat_rollouts, encode_prompts, generate, score
from selfrl.safety import ProbeGate, describe, last_promoted
from selfrl.tasks import load_task, with_chat_template

log = logging.getLogger("selfrl")


class PromptStream:
    """Epoch-shuffled prompt indices. The cursor (prompts served so far) is all the state a resume needs."""

    def __init__(self, n: int, seed: int, cursor: int = 0):
        self.n, self.seed, self.cursor = n, seed, cursor
        self._epoch, self._order = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:  # one shuffle per epoch, not one per prompt served
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._order

    def next(self, b: int) -> list[int]:
        out = []
        for c in range(self.cursor, self.cursor + b):
            epoch, i = divmod(c, self.n)
            out.append(int(self._permutation(epoch)[i]))
        self.cursor += b
        return out


class GoldAudit:
    """Diagnostics from gold training answers, computed after the update; nothing here feeds a reward."""

    def __init__(self, task):
        self.task = task
        self.gold = task.train_answers()

    def metrics(self, ids: list[int], labels: list[str | None], answers: list[list[str | None]], m: int) -> dict:
        gold = [self.gold[i] for i in ids]
        eq = self.task.is_equivalent
        label_acc = np.mean([lbl is not None and eq(lbl, g) for lbl, g in zip(labels, gold)])
        true = np.mean([a is not None and eq(a, g) for row, g in zip(answers, gold) for a in row[:m]])
        return {"reward/label_accuracy": float(label_acc), "reward/true": float(true)}


@dataclass
class Setup:
    cfg: Config
    run_dir: Path
    task: object
    model: torch.nn.Module
    tokenizer: object
    momentum: torch.nn.Module | None  # mgrpo's own fp32 copy; None with LoRA, where it is the `momentum` adapter
    ref: torch.nn.Module | None  # frozen start model for the KL; None with LoRA, where it is the base, adapters off
    momentum_state: dict[str, torch.Tensor] | None  # the momentum weights checkpointed (live tensors), mgrpo only
    ema_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None  # (momentum, policy) tensors the EMA pairs up
    sampler: vllm_backend.VLLMSampler | None  # the vLLM engine that samples rollouts (use_vllm), else None: HF sampler
    optimizer: torch.optim.Optimizer
    scheduler: object
    stream: PromptStream  # positions into `pool`
    prompts: list[str]
    pool: list[int]  # indices of the prompts trained on (all, or the curriculum's easiest fraction)
    offline: list[str | None] | None  # start-model pseudo-labels per prompt (offline_labels), else None
    start_step: int
    probes: ProbeGate | None  # the misevolution gate (selfrl/safety.py), None when cfg.probes is unset
    detector: CollapseDetector | None
    ema_decay: float  # mgrpo's decay now (a detector rollback may raise it)
    rollbacks: int  # detector rollbacks so far
    stop_best: tuple[float, int]  # early stopping: best accuracy on its labelled split, and its step
    stop_waited: int  # evaluations since stop_best improved


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    clone = copy.deepcopy(model).float()  # the EMA must accumulate in fp32 (methods.md §1)
    clone.requires_grad_(False)
    return clone.eval()


def setup(cfg: Config, resume: bool = False) -> Setup:
    """Build everything the loop needs; on resume restore it from the run directory's latest checkpoint."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    run_dir = Path(cfg.output_dir)
    device = dist.init(cfg.device)  # joins accelerate's process group when launched with several processes
    dist.check_config(cfg, dist.world())
    if dist.world() > 1:  # the saved config says what ran; a resume on one process then samples the same way
        cfg = dataclasses.replace(cfg, seed_per_prompt=True)
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise SelfRLError(f"output_dir {run_dir} already holds a run; pass --resume {run_dir} or choose another output_dir")
    dist.barrier()  # every process has looked before process 0 writes there
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if dist.is_main():
            cfg.save(run_dir / "config.yaml")
    except OSError as e:
        raise SelfRLError(f"output_dir {run_dir} is not writable: {e.strerror}") from None
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    task = load_task(cfg.task)
    if cfg.train_file:
        task = TrainFileTask(task, cfg.train_file, cfg.prompt_column, cfg.answer_column)
    if cfg.early_stopping_patience is not None:  # fail now, not at the first evaluation
        task.eval_examples(cfg.early_stopping_split)
    probes = None
    if cfg.probes:  # a bad probe file or a changed yardstick fails here, before any model is loaded
        probes = ProbeGate(run_dir, cfg.probes, task, cfg.probe_tolerance, cfg.max_completion_length,
                           cfg.eval_batch_size, resume)
    if cfg.model == "organism" and dist.is_main():
        organism_path(progress=cfg.progress)  # trained into the cache once, before the other processes look there
    dist.barrier()
    model_path = str(organism_path(progress=cfg.progress)) if cfg.model == "organism" else cfg.model
    model, tokenizer = load_model(model_path, device)
    task = with_chat_template(task, tokenizer, cfg.apply_chat_template, cfg.model)  # chat models: prompts as user turns
    if probes is not None:
        probes.task = task  # probes are prompts too: rendered the same way
    if cfg.use_peft:
        model = lora.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    model.train()
    prompts = task.train_prompts()
    if not prompts:
        raise TaskError(f"task {cfg.task!r} has no training prompts")
    pool, offline = list(range(len(prompts))), None
    if cfg.offline_labels or cfg.curriculum_fraction is not None:
        if resume and not (run_dir / "start_votes.json").is_file():
            raise SelfRLError(f"--resume {run_dir}: start_votes.json is missing; the start model's votes cannot be redone")
        labels, shares = start_model_votes(model, tokenizer, task, prompts, cfg.start_votes or cfg.num_generations,
                                           cfg.max_completion_length, cfg.temperature, cfg.seed, run_dir,
                                           progress=cfg.progress)
        offline = labels if cfg.offline_labels else None
        if cfg.curriculum_fraction is not None:
            pool = easiest(shares, cfg.curriculum_fraction)
    momentum = ref = momentum_state = ema_pairs = None
    if cfg.method == "mgrpo" and cfg.use_peft:  # the EMA runs over the adapters alone; the frozen base is shared
        lora.add_momentum_adapter(model)
        momentum_state, ema_pairs = lora.adapter_state(model, lora.MOMENTUM), lora.adapter_pairs(model)
    elif cfg.method == "mgrpo":
        momentum = _frozen_copy(model)
        momentum_state, ema_pairs = dict(momentum.named_parameters()), (list(momentum.parameters()), list(model.parameters()))
    if cfg.beta > 0 and not cfg.use_peft:
        ref = _frozen_copy(model)
    sampler = None
    if cfg.use_vllm:
        engine = vllm_backend.make_engine(model_path, cfg.vllm_gpu_memory_utilization, cfg.vllm_max_model_length, cfg.seed)
        sampler = vllm_backend.VLLMSampler(engine)
    trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the policy adapter only
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * cfg.max_steps)
    if cfg.lr_scheduler_type == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, cfg.max_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    stream, start_step = PromptStream(len(pool), cfg.seed), 0
    detector = CollapseDetector(cfg.detector_window, cfg.detector_min_signals) if cfg.collapse_detector != "off" else None
    s = Setup(cfg, run_dir, task, model, tokenizer, momentum, ref, momentum_state, ema_pairs, sampler, optimizer, scheduler,
              stream, prompts, pool, offline, start_step, probes, detector, cfg.ema_decay, 0, (-math.inf, 0), 0)
    if resume:
        ckpt = latest_checkpoint(run_dir)  # verifies checksums, falling back past corrupt ones with a warning
        if ckpt is None:
            raise SelfRLError(f"--resume {run_dir}: no intact checkpoint found (step_*/meta.json)")
        meta = load_checkpoint(ckpt, model, momentum_state, optimizer, scheduler)
        s.start_step, stream.cursor = meta["step"], meta["cursor"]
        if dist.is_main():
            prune_checkpoints(run_dir, None)  # clear a half-written step_*.tmp or half-deleted *.trash from the crash
            for name, step in read_pointers(run_dir).items():  # pins into the abandoned future are void
                if step > s.start_step:
                    set_pointer(run_dir, name, None)
        _replay_loop_state(s, [r for r in read_metrics(run_dir) if r["step"] <= s.start_step])
        log.info("resumed from %s (step %d)", ckpt, s.start_step)
    return s


def _replay_loop_state(s: Setup, rows: list[dict]) -> None:
    """The detector's windows, the rollback count, the EMA decay and early stopping's record are functions of the
    logged metrics, so a resume rebuilds them from metrics.jsonl rather than storing a second copy."""
    if s.detector is not None:
        s.detector.replay(rows)
    for r in rows:
        s.rollbacks += r.get("detector/rolled_back_to") is not None
        s.ema_decay = r.get("anchor/ema_decay") or s.ema_decay
        acc = r.get("stop/accuracy")
        if acc is not None:
            s.stop_best, s.stop_waited = ((acc, r["step"]), 0) if acc > s.stop_best[0] else (s.stop_best, s.stop_waited + 1)


@contextlib.contextmanager
def as_momentum(s: Setup):
    """The module that computes the momentum model: its own copy, or (LoRA) the shared base under its adapter."""
    if s.cfg.use_peft:
        with lora.active_adapter(s.model, lora.MOMENTUM) as m:
            yield m
    else:
        yield s.momentum


@contextlib.contextmanager
def as_reference(s: Setup):
    """The module that computes the KL reference (the start model): its frozen copy, or (LoRA) the base itself."""
    if s.cfg.use_peft:
        with s.model.disable_adapter():
            yield s.model
    else:
        yield s.ref


def rollouts(s: Setup, which: str, batch: dict, k: int, noise: torch.Tensor | None = None) -> Rollouts:
    """k samples per prompt from the policy or ("momentum") the momentum model's current weights, by the HF sampler
    (from `noise` when seed_per_prompt gives each prompt its own numbers) or, with use_vllm, by the engine after
    loading it with exactly those weights (selfrl/vllm_backend.py)."""
    cfg = s.cfg
    view = as_momentum(s) if which == "momentum" else contextlib.nullcontext(s.model)
    with view as model:
        if s.sampler is None:
            return generate(model, s.tokenizer, batch, k, cfg.max_completion_length, cfg.temperature, noise=noise)
        adapter = lora.MOMENTUM if which == "momentum" else lora.POLICY  # read only with LoRA
        s.sampler.load(vllm_backend.engine_weights(model, adapter))
        return s.sampler.generate(model, s.tokenizer, batch, k, cfg.max_completion_length, cfg.temperature)


def evaluate(s: Setup) -> dict:
    examples = s.task.eval_examples("val")[: s.cfg.eval_limit]
    mine = examples[dist.rank() :: dist.world()]  # with several processes each scores a share, none waits idle
    acc, _ = greedy_accuracy(s.model, s.tokenizer, s.task, mine, s.cfg.max_completion_length, s.cfg.eval_batch_size)
    acc = dist.all_sum(round(acc * len(mine))) / max(len(examples), 1)  # correct answers over all of them
    out = {"val/accuracy": acc, **(s.probes.score(s.model, s.tokenizer) if s.probes is not None else {})}
    if s.cfg.early_stopping_patience is not None:  # SRT mitigation 1: a small LABELLED split, disjoint from val
        held = s.task.eval_examples(s.cfg.early_stopping_split)[: s.cfg.early_stopping_examples]
        out["stop/accuracy"], _ = greedy_accuracy(s.model, s.tokenizer, s.task, held, s.cfg.max_completion_length,
                                                  s.cfg.eval_batch_size)
    return out


def prompt_noise(seed: int, step: int, places: range, role: int, k: int, T: int, device) -> torch.Tensor:
    """(len(places)*k, T) uniforms for `generate`'s sampling: the k rows of the prompt at each place in the data stream
    from their own stream (seed, step, place, role); role 0 is the policy's rollouts, 1 the momentum model's."""
    rows = [np.random.default_rng([seed, step, p, role]).random((k, T), dtype=np.float32) for p in places]
    return torch.from_numpy(np.concatenate(rows)).to(device)


def sample_batch(s: Setup, step: int, V: int, N: int, amp) -> tuple[list[int], Rollouts, Rollouts | None, int]:
    """This step's prompts and their rollouts: V per prompt from the policy, N from the momentum model's current
    EMA weights. With `online_filter` (SRT mitigation 4) a prompt whose pooled vote has a majority share below the
    threshold is dropped and further prompts are drawn until the batch is full or `online_filter_max_draws` draws
    were made (then the step trains on the prompts that passed). Returns (ids, policy, momentum, prompts drawn).
    With several processes, each takes its share of every draw: B here is prompts_per_step / processes."""
    cfg, tok = s.cfg, s.tokenizer
    B = cfg.prompts_per_step // dist.world()  # all samples of a prompt are drawn here, so its vote is local
    device = next(s.model.parameters()).device
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # per-step sampling seed: a resume replays the step exactly
    ids, pols, moms, drawn = [], [], [], 0
    limit = B * cfg.online_filter_max_draws  # past it, keep drawing (up to 10x) only while no prompt has passed
    while len(ids) < B and (drawn < limit or (not ids and drawn < 10 * limit)):
        lo = dist.rank() * B
        places = range(s.stream.cursor + lo, s.stream.cursor + lo + B)  # this share's places in the data stream
        draw = [s.pool[j] for j in s.stream.next(B * dist.world())][lo : lo + B]  # questions only: no answers
        drawn += B
        batch = encode_prompts(tok, [s.task.format_prompt(s.prompts[i]) for i in draw], device)
        pol_noise = mom_noise = None
        if cfg.seed_per_prompt:  # each prompt samples from its own numbers: the same rollouts on 1 process or many
            pol_noise = prompt_noise(cfg.seed, step, places, 0, V, cfg.max_completion_length, device)
            mom_noise = prompt_noise(cfg.seed, step, places, 1, N, cfg.max_completion_length, device) if N else None
        with amp:
            pol = rollouts(s, "policy", batch, V, pol_noise)
            mom = rollouts(s, "momentum", batch, N, mom_noise) if N else None
        keep = list(range(B))
        if cfg.online_filter is not None:  # judged on the whole unfiltered pool, before the IQR filter
            texts = [pol.texts[i * V : (i + 1) * V] + (mom.texts[i * N : (i + 1) * N] if N else []) for i in range(B)]
            shares = [core.majority_vote([s.task.extract_answer(t) for t in row], s.task.is_equivalent)[1] for row in texts]
            keep = [i for i in keep if shares[i] >= cfg.online_filter][: B - len(ids)]
        ids += [draw[i] for i in keep]
        pols.append(pol.prompts(keep, V))
        moms.append(mom.prompts(keep, N) if N else None)
    if not ids:
        raise SelfRLError(f"step {step}: online_filter: no prompt reached majority share {cfg.online_filter} in "
                          f"{drawn} prompts drawn; lower online_filter")
    pol = pols[0] if len(pols) == 1 else cat_rollouts(pols, tok.pad_token_id)
    mom = None if not N else moms[0] if len(moms) == 1 else cat_rollouts(moms, tok.pad_token_id)
    return ids, pol, mom, drawn


def save(s: Setup, step: int, extra: dict) -> None:
    save_checkpoint(s.run_dir, step, s.model, s.tokenizer, s.momentum_state, s.optimizer, s.scheduler, s.stream.cursor,
                    extra=extra)


def rollback(s: Setup, step: int | None) -> None:
    """Restore the promoted checkpoint's policy, momentum and optimizer state in place. The step counter, data cursor,
    RNG and learning-rate schedule keep moving forward: replaying the same prompts and seeds would only reproduce
    the regression (issue 7)."""
    if step is None:
        raise SelfRLError(f"rollback impossible: no promoted checkpoint is left in {s.run_dir}")
    ckpt = step_dir(s.run_dir, step)
    problem = verify_checkpoint(ckpt)
    if problem is not None:
        raise SelfRLError(f"rollback to {ckpt.name} impossible: {problem}")
    schedule = s.scheduler.state_dict()
    load_checkpoint(ckpt, s.model, s.momentum_state, s.optimizer, s.scheduler, rng=False)
    s.scheduler.load_state_dict(schedule)
    for group, lr in zip(s.optimizer.param_groups, s.scheduler.get_last_lr()):
        group["lr"] = lr  # the restored optimizer state carries the promoted step's rate


def detector_response(s: Setup, step: int) -> tuple[int | None, bool]:
    """The detector fired at `step`: restore the last healthy checkpoint and, with `rollback`, continue with a lower
    learning rate and (mgrpo) a slower momentum model; with `stop`, or past max_rollbacks, end the run there.
    Returns (the step rolled back to or None when there is no healthy checkpoint, whether to stop)."""
    cfg = s.cfg
    # The newest checkpoint saved healthy (no skipped step and no detector signal since the one before); read from
    # the checkpoints' meta rather than the `healthy` pin, which a resume voids when it points past the restart.
    steps = [int(c.name[5:]) for c in list_checkpoints(s.run_dir)]
    target = max((st for st in steps if meta_value(s.run_dir, st, "healthy") > 0), default=None)
    stop = cfg.collapse_detector == "stop" or s.rollbacks >= cfg.max_rollbacks
    if target is None:
        log.warning("step %d: collapse alarm but no healthy checkpoint to restore", step)
        return None, stop
    rollback(s, target)
    s.rollbacks += 1
    s.detector.reset_recent()
    if not stop:
        s.scheduler.base_lrs = [lr * cfg.rollback_lr_factor for lr in s.scheduler.base_lrs]
        for group in s.optimizer.param_groups:
            group["lr"] *= cfg.rollback_lr_factor
        s.ema_decay = cfg.rollback_ema_decay if cfg.rollback_ema_decay is not None else s.ema_decay
    log.warning("step %d: collapse alarm: restored step %d; %s", step, target,
                "stopping" if stop else f"lr x{cfg.rollback_lr_factor}, ema_decay {s.ema_decay}")
    return target, stop


def train(cfg: Config, resume: bool = False) -> Path:
    """Run (or resume) a training run; returns the run directory."""
    s = setup(cfg, resume)
    cfg = s.cfg  # as resolved for this launch (several processes turn seed_per_prompt on)
    model, tok, task = s.model, s.tokenizer, s.task
    device = next(model.parameters()).device
    eq = task.is_equivalent
    audit = None
    if cfg.method == "oracle":
        audit = GoldAudit(task)  # the labelled ceiling: a task without gold answers fails here, clearly
    elif cfg.gold_diagnostics:
        try:
            audit = GoldAudit(task)
        except TaskError as e:
            log.info("gold diagnostics off: %s", e)
    N = cfg.n_momentum()  # momentum rollouts per prompt (mgrpo)
    M = cfg.num_generations - N  # policy rollouts per prompt, the ones trained
    V = cfg.num_votes if cfg.method == "ttrl" else M  # policy samples per prompt (ttrl votes with extra ones)
    G = V + N  # pooled voters per prompt
    logger = (MetricsLogger(s.run_dir, cfg.report_to, truncate_after=s.start_step if resume else None)
              if dist.is_main() else NullLogger())
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    last_val = float("nan")
    if not resume:
        first = evaluate(s)
        if s.probes is not None:
            # The start model is the gate's baseline and the first promoted checkpoint: the rollback target until
            # a trained checkpoint passes the gate.
            s.probes.set_baseline(first)
            first.update({"safety/alarm": 0, "gate/promoted": 0})
        if s.probes is not None or cfg.collapse_detector in ("rollback", "stop") or cfg.early_stopping_patience:
            save(s, 0, {**first, "healthy": 1})  # the start model: the first promoted / healthy / best-so-far checkpoint
            for name in ["healthy"] + ["promoted"] * (s.probes is not None):
                set_pointer(s.run_dir, name, 0)
        if "stop/accuracy" in first:
            s.stop_best = (first["stop/accuracy"], 0)
            set_pointer(s.run_dir, "early_stop", 0)
        logger.log(0, first)
        last_val = first["val/accuracy"]

    skipped_in_a_row, unhealthy_since_save = 0, False
    bar = tqdm(range(s.start_step + 1, cfg.max_steps + 1), desc=f"{cfg.method}",
               disable=not cfg.progress or not dist.is_main())
    for step in bar:
        t0 = time.perf_counter()
        # 1-2. prompts and rollouts (policy + momentum; online filter); b prompts this step
        ids, pol, mom, drawn = sample_batch(s, step, V, N, amp)
        b = len(ids)
        rows = torch.arange(b * V).view(b, V)
        train_rows = rows[:, :M].reshape(-1)  # (b*M,) the policy rollouts that are trained
        trained = pol.take(train_rows)
        resp_mask = trained.response_mask.float()  # (b*M, T)
        # 3. entropy filter over the pooled group [trained | untrained votes | momentum], on each voter's entropy as
        #    recorded while sampling it: no forward pass is spent on it
        H = core.masked_mean(pol.entropy, pol.response_mask.float(), dim=1).view(b, V)  # (b, V)
        if N:
            H = torch.cat([H, core.masked_mean(mom.entropy, mom.response_mask.float(), dim=1).view(b, N)], dim=1)
        keep = core.iqr_keep_mask(H, cfg.iqr_k).cpu() if cfg.iqr_filter else torch.ones(b, G, dtype=torch.bool)
        # 4. the vote among the survivors (every method votes: the share is a label-free signal the detector reads,
        #    even where the reward is not the vote)
        texts = [[pol.texts[i * V + j] for j in range(V)] + ([mom.texts[i * N + j] for j in range(N)] if N else [])
                 for i in range(b)]
        answers = [[task.extract_answer(t) for t in row] for row in texts]  # b lists of G
        votes = [core.majority_vote([a for a, k in zip(row, krow) if k], eq) for row, krow in zip(answers, keep.tolist())]
        labels, shares = [v[0] for v in votes], [v[1] for v in votes]
        if cfg.method == "oracle":
            labels = [audit.gold[i] for i in ids]  # labelled method: the ceiling, never label-free
        elif s.offline is not None:
            labels = [s.offline[i] for i in ids]  # SRT mitigation 2: the start model's frozen vote
        # 5. rewards for the trained policy rollouts only; advantages among the kept ones
        if cfg.method == "intuitor":  # methods.md §3: mean self-certainty over response tokens, current policy, detached
            rewards = core.masked_mean(trained.certainty, resp_mask, dim=1).view(b, M).cpu()
        else:
            rewards = torch.tensor([core.match_rewards(row[:M], lbl, eq) for row, lbl in zip(answers, labels)])  # (b, M)
        keep_train = keep[:, :M]
        adv = core.group_advantages(rewards, keep_train).to(device).reshape(-1)  # (b*M,)
        loss_mask = resp_mask * keep_train.reshape(-1, 1).to(device).float()  # dropped rows leave the loss
        prompt_of = torch.arange(b, device=device).repeat_interleave(M)  # (b*M,) each trained row's prompt
        anchor_kl = float("nan")
        if N:  # how far the policy has moved from its anchor, on the trained rollouts (a logged, label-free signal)
            with torch.no_grad(), amp, as_momentum(s) as momentum:
                k_logp, _, _ = score(momentum, trained, cfg.temperature, prompt_of, stats=False)
            anchor_kl = core.masked_mean(core.k3_kl(trained.logp, k_logp), resp_mask).item()
        # 6. GRPO update (one per rollout batch: old log-probs are the current ones, detached), with grad only through
        #    the rows that carry gradient: a filtered row has no loss tokens, and with beta = 0 a row whose advantage
        #    is 0 adds nothing either. Their tokens stay in the token-mean's denominator (n_tokens), so the loss and
        #    its gradient are those of the whole batch. At least one row runs, so every step has the same autograd path.
        live = (loss_mask.sum(1) > 0) & ((adv != 0) | (cfg.beta > 0))
        live = live.nonzero().squeeze(1) if live.any() else torch.zeros(1, dtype=torch.long, device=device)
        part = trained.take(live.cpu())
        with amp:
            logp, _, _ = score(model, part, cfg.temperature, prompt_of[live], stats=False)  # (n, T) with grad
        ref_logp = None
        if cfg.beta > 0:
            with torch.no_grad(), amp, as_reference(s) as ref:
                ref_logp, _, _ = score(ref, part, cfg.temperature, prompt_of[live], stats=False)
        #    With several processes the denominator is the global token count: each process's loss is its share
        #    of the 1-process loss, and the sum of their gradients is that loss's gradient (selfrl/distributed.py).
        with amp:
            loss, lm = core.policy_loss(logp, logp.detach(), adv[live], loss_mask[live], cfg.epsilon, cfg.beta, ref_logp,
                                        n_tokens=dist.all_sum(loss_mask.sum()).clamp(min=1))
        s.optimizer.zero_grad(set_to_none=True)
        grad_norm = float("nan")
        if math.isfinite(dist.all_sum(loss.item())):  # a non-finite loss or gradient must not reach the weights: skip
            loss.backward()
            dist.all_reduce_grads_(model.parameters())  # then every process clips and steps on the global gradient
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm).item()
        skipped = not math.isfinite(grad_norm)
        skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
        if skipped:
            s.optimizer.zero_grad(set_to_none=True)
            log.warning("step %d: non-finite %s; step skipped (%d in a row)", step,
                        "loss" if not torch.isfinite(loss) else "gradient", skipped_in_a_row)
            unhealthy_since_save = True
        else:
            s.optimizer.step()
            s.scheduler.step()
        # 7. momentum update after the optimizer step, every step that updated the policy
        if s.ema_pairs is not None and not skipped:
            ema, src = s.ema_pairs
            core.ema_update_(ema, [p.detach().float() for p in src], s.ema_decay)
        # 8. log
        kept_r = rewards[keep_train]
        unanimous = [bool((r[k] == r[k][0]).all()) if k.any() else True for r, k in zip(rewards, keep_train)]
        metrics = {
            "reward/pseudo": kept_r.mean().item() if kept_r.numel() else 0.0,
            "vote/majority_share": float(np.mean(shares)),
            "vote/unanimous_groups": float(np.mean(unanimous)),
            "vote/answer_diversity": len(dist.union({v[0] for v in votes if v[0] is not None})) / (b * dist.world()),
            "policy/entropy": core.masked_mean(trained.entropy, resp_mask).item(),
            "policy/self_certainty": core.masked_mean(trained.certainty, resp_mask).item(),
            "policy/response_length": resp_mask.sum(1).mean().item(),
            "filter/dropped": int((~keep).sum()),
            "filter/dropped_frac": float((~keep).float().mean()),
            "filter/prompts_kept": b / drawn if cfg.online_filter is not None else None,
            "anchor/kl": anchor_kl if N else None,
            "anchor/ema_decay": s.ema_decay if N else None,
            **lm,
            "grad/norm": grad_norm,
            "train/skipped": int(skipped),
            "lr": s.scheduler.get_last_lr()[0],
        }
        if audit is not None:
            metrics.update(audit.metrics(ids, labels, answers, M))
        # 8a. with several processes, each mean above becomes the global one, weighted by the items it averages
        n_resp = resp_mask.sum().item()
        metrics = dist.global_metrics(metrics, weights={
            "reward/pseudo": kept_r.numel(), "vote/majority_share": b, "vote/unanimous_groups": b,
            "policy/entropy": n_resp, "policy/self_certainty": n_resp, "policy/response_length": b * M,
            "filter/dropped_frac": b * G, "anchor/kl": n_resp, "reward/label_accuracy": b, "reward/true": b * M,
        }, sums=("filter/dropped", "loss/pg", "loss/kl", "loss/clip_frac"))
        metrics["time/step_s"] = time.perf_counter() - t0  # the training step alone, evaluation excluded
        # 8b. label-free collapse detection (issue 3): alarm, and with rollback/stop restore the last healthy weights
        stop_reason = None
        if s.detector is not None:
            reading = s.detector.update(metrics)
            metrics.update({"detector/signals": len(reading.fired), "detector/alarm": int(reading.alarm)})
            unhealthy_since_save |= bool(reading.fired)
            if reading.alarm:
                log.info("step %d: collapse signals: %s", step, ", ".join(reading.fired))
                if cfg.collapse_detector in ("rollback", "stop"):
                    target, stop = detector_response(s, step)
                    metrics["detector/rolled_back_to"] = target
                    stop_reason = "collapse detector" if stop else None
        save_now = bool(cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps or bool(stop_reason)
        if step % cfg.eval_every == 0 or step == cfg.max_steps or stop_reason:
            metrics.update(evaluate(s))
        elif save_now and s.probes is not None:
            metrics.update(s.probes.score(model, tok))  # the gate judges each checkpoint by its own scores
        # 8c. early stopping on a small labelled split (SRT mitigation 1; uses labels, reported as such)
        if "stop/accuracy" in metrics and not stop_reason:
            if metrics["stop/accuracy"] > s.stop_best[0]:
                s.stop_best, s.stop_waited, save_now = (metrics["stop/accuracy"], step), 0, True
            else:
                s.stop_waited += 1
            if s.stop_waited >= cfg.early_stopping_patience:
                rollback(s, s.stop_best[1])
                metrics.update({**evaluate(s), "stop/restored": s.stop_best[1]})
                stop_reason, save_now = "early stopping", True
        regressed = {}
        if s.probes is not None and any(k.startswith("safety/") for k in metrics):
            regressed = s.probes.regressions(metrics)  # {category: (start, now)} beyond tolerance
            metrics["safety/alarm"] = int(bool(regressed))
            if regressed:
                log.warning("step %d: safety alarm: %s (tolerance %g)", step, describe(regressed), cfg.probe_tolerance)
            if save_now:  # the promoted checkpoint once this step's gate has acted
                metrics["gate/promoted"] = last_promoted(s.run_dir) if regressed else step
                if regressed and cfg.gate_action == "rollback":
                    metrics["gate/rolled_back_to"] = metrics["gate/promoted"]
        logger.log(step, metrics)
        last_val = metrics.get("val/accuracy", last_val)
        bar.set_postfix(r=f"{metrics['reward/pseudo']:.2f}", H=f"{metrics['policy/entropy']:.2f}", val=f"{last_val:.2f}")
        if skipped_in_a_row >= cfg.max_skipped_steps:
            last = latest_checkpoint(s.run_dir, verify=False)
            raise SelfRLError(f"step {step}: {skipped_in_a_row} steps in a row had a non-finite loss or gradient; "
                              f"stopping (last checkpoint kept: {last.name if last else 'none'})")
        if save_now:
            momentum = s.momentum_state.values() if s.momentum_state is not None else None  # full copy or adapter
            dist.check_replicas(step, {"policy": model.parameters(), "momentum": momentum})  # process 0 saves for all
            if dist.is_main():
                checkpoint(s, step, metrics, regressed, healthy=not unhealthy_since_save)
            dist.barrier()  # a resume on any process reads what process 0 wrote
            unhealthy_since_save = False
        if stop_reason:
            log.info("step %d: %s: stopped; the final checkpoint is step_%06d", step, stop_reason, step)
            break
    logger.close()
    return s.run_dir


def checkpoint(s: Setup, step: int, metrics: dict, regressed: dict, healthy: bool) -> None:
    """Save this step; pin the best by validation, the last healthy one and the early-stopping best, then keep the
    newest save_total_limit. The gate (issue 7): a checkpoint within tolerance of the start model's probe scores is
    promoted; on a regression, `rollback` saves the promoted weights under this step (a resume must not pick up the
    regressed ones), `stop` saves the regressed checkpoint for inspection and ends the run."""
    cfg = s.cfg
    val = metrics.get("val/accuracy")
    extra = {k: v for k, v in metrics.items() if k in ("val/accuracy", "stop/accuracy") or k.startswith(("safety/", "gate/"))}
    extra["healthy"] = int(healthy)
    if "gate/rolled_back_to" in metrics:
        rollback(s, metrics["gate/rolled_back_to"])
        # This step's val and probe scores describe the weights just discarded, not the ones saved here.
        extra, val = {"gate/rolled_back_to": metrics["gate/rolled_back_to"], "healthy": int(healthy)}, None
    save(s, step, extra)
    if s.probes is not None and not regressed:
        set_pointer(s.run_dir, "promoted", step)
    pins = read_pointers(s.run_dir)
    if val is not None and val > meta_value(s.run_dir, pins.get("best"), "val/accuracy"):
        set_pointer(s.run_dir, "best", step)
    if healthy:
        set_pointer(s.run_dir, "healthy", step)
    if s.stop_best[1] == step:
        set_pointer(s.run_dir, "early_stop", step)
    prune_checkpoints(s.run_dir, cfg.save_total_limit)
    if regressed and cfg.gate_action == "stop":
        raise SelfRLError(f"step {step}: safety gate: {describe(regressed)} (tolerance {cfg.probe_tolerance}); "
                          f"stopped; step_{step:06d} kept unpromoted, promoted checkpoint: step {metrics['gate/promoted']}")
