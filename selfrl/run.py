"""Run control for the RL loop (selfrl/grpo.py): everything around the paper's step, called from the loop by name.

  setup          build the run (task, model, momentum/reference, optimizer, data stream, gate, detector) or
                 restore it from the run directory's latest checkpoint
  begin          step 0: the start model's evaluation, the gate's baseline and the first checkpoint
  after_step     skipped-step accounting, the collapse detector and its response, evaluation, early stopping,
                 the misevolution gate, logging, saving with its pointers
  detector_response                     the collapse detector's response (rollback, gentler, or stop)
The run directory itself (locks, resume rules, checkpoints and their pointers) is selfrl/rundir.py.

None of it changes what a step computes: a run without a detector, gate or early stopping trains the same.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfrl import fsdp, lora, rundir, vllm_backend
from selfrl import distributed as dist
from selfrl.checkpoint import (latest_checkpoint, list_checkpoints, meta_value, prune_checkpoints,
                               read_pointers, set_pointer)
from selfrl.data import TrainFileTask
from selfrl.canary import Canary
from selfrl.detector import CollapseDetector
from selfrl.errors import SelfRLError, TaskError
from selfrl.evaluate import greedy_accuracy, sampled_accuracy
from selfrl.grpo_config import ANCHORED, Config
from selfrl.logger import MetricsLogger, NullLogger, read_metrics
from selfrl.rundir import check_fresh, lock_run_dir, rollback, save, save_and_pin, unlock
from selfrl.mitigations import easiest, start_model_votes
from selfrl.models import load_model
from selfrl.organism import resolve_organism
from selfrl.rollout import own_rng
from selfrl.safety import ProbeGate, describe, last_promoted
from selfrl.tasks import load_task, with_chat_template
from selfrl.tasks.checked import check_encodable

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

    def metrics(self, ids: list[int], labels: list[str | None], answers: list[list[str | None]],
                keep: list[list[bool]]) -> dict:
        """label accuracy per prompt; reward/true over the trained rollouts the IQR filter kept (`keep`: (B, M)), the
        same rollouts reward/pseudo averages (None when the filter kept none)."""
        gold = [self.gold[i] for i in ids]
        eq = self.task.is_equivalent
        label_acc = np.mean([lbl is not None and eq(lbl, g) for lbl, g in zip(labels, gold)])
        true = [a is not None and eq(a, g) for row, krow, g in zip(answers, keep, gold) for a, k in zip(row, krow) if k]
        return {"reward/label_accuracy": float(label_acc), "reward/true": float(np.mean(true)) if true else None}


class LabelFree:
    """The task as a label-free loop sees it: everything but the gold training answers, which raise (issue 21: the
    separation is structural, not one `if`). Evaluation's labelled splits stay readable: they score, never reward."""

    def __init__(self, task, method: str):
        self._task, self._method = task, method

    def train_answers(self):
        raise TaskError(f"method {self._method!r} is label-free: the training loop holds no gold answers")

    def __getattr__(self, name):
        return getattr(self._task, name)


@dataclass
class Setup:
    """Everything a run holds between steps."""

    cfg: Config
    run_dir: Path
    task: object
    model: torch.nn.Module
    tokenizer: object
    momentum: torch.nn.Module | None  # mgrpo's momentum / corewarding's teacher, fp32; None with LoRA (an adapter)
    ref: torch.nn.Module | None  # frozen start model for the KL; None with LoRA, where it is the base, adapters off
    momentum_state: dict[str, torch.Tensor] | None  # the momentum weights checkpointed (live tensors), ANCHORED only
    ema_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None  # (momentum, policy) tensors the EMA pairs up
    sampler: vllm_backend.VLLMSampler | None  # the vLLM engine that samples rollouts (use_vllm), else None: HF sampler
    optimizer: torch.optim.Optimizer
    scheduler: object
    stream: PromptStream  # positions into `pool`
    prompts: list[str]
    pool: list[int]  # indices of the prompts trained on (all, or the curriculum's easiest fraction)
    offline: list[str | None] | None  # start-model pseudo-labels per prompt (offline_labels), else None
    oracle_gold: list[str] | None  # gold training answers, held only by the labelled `oracle` method, else None
    audit: GoldAudit | None  # label diagnostics, computed after each step (gold_diagnostics), else None
    probes: ProbeGate | None  # the misevolution gate (selfrl/safety.py), None when cfg.probes is unset
    canary: Canary | None  # the detector's canary prompts (selfrl/canary.py), None when the detector is off
    detector: CollapseDetector | None
    ema_decay: float  # mgrpo's decay now (a detector rollback may raise it)
    start_step: int = 0
    rollbacks: int = 0  # detector rollbacks so far
    stop_best: tuple[float, int] = (-math.inf, 0)  # early stopping: best accuracy on its labelled split, and its step
    stop_waited: int = 0  # evaluations since stop_best improved
    skipped_in_a_row: int = 0  # steps in a row whose loss or gradient was non-finite
    unhealthy_since_save: bool = False  # a skipped step or a detector signal since the last checkpoint
    last_val: float = float("nan")  # the latest val/accuracy, for the progress bar
    lock: object = None  # the run directory's lock file (process 0), held until release()


@contextlib.contextmanager
def as_momentum(s: Setup):
    """The module that computes the momentum model: its own copy, or (LoRA) the shared base under its adapter."""
    if s.cfg.use_peft:
        with lora.active_adapter(s.model, lora.MOMENTUM) as m:
            yield m
    else:
        with fsdp.gathered(s.momentum) as m:  # sharded (fsdp): whole for the block, so its forwards are local
            yield m


@contextlib.contextmanager
def as_reference(s: Setup):
    """The module that computes the KL reference: the start model's frozen copy, or (LoRA) the base itself;
    corewarding's is its EMA teacher (Co-rewarding-II)."""
    if s.cfg.method == "corewarding":
        with as_momentum(s) as teacher:
            yield teacher
    elif s.cfg.use_peft:
        with s.model.disable_adapter():
            yield s.model
    else:
        with fsdp.gathered(s.ref) as ref:
            yield ref


def whole(s: Setup):
    """The policy (and the momentum model) gathered whole on every process for a block of generation: evaluation,
    the canary, probes. A plain model passes through. Every process must enter it (the gathering is a collective),
    even where process 0 alone then computes (`dist.from_main`)."""
    stack = contextlib.ExitStack()
    stack.enter_context(fsdp.gathered(s.model))
    if s.momentum is not None:
        stack.enter_context(fsdp.gathered(s.momentum))
    return stack


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    clone = copy.deepcopy(model).float()  # the EMA must accumulate in fp32 (methods.md §1)
    clone.requires_grad_(False)
    return clone.eval()


def setup(cfg: Config, resume: bool = False) -> Setup:
    """Build everything the loop needs; on resume restore it from the run directory's latest checkpoint."""
    run_dir = Path(cfg.output_dir)
    device = dist.init(cfg.device)  # joins accelerate's process group when launched with several processes
    cfg.validate_processes(dist.world())
    if dist.world() > 1:  # the saved config says what ran; a resume on one process then samples the same way
        cfg = dataclasses.replace(cfg, seed_per_prompt=True)
    if not resume:
        check_fresh(run_dir)
    dist.barrier()  # every process has looked before process 0 writes there
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SelfRLError(f"output_dir {run_dir} is not writable: {e.strerror}") from None
    lock = lock_run_dir(run_dir) if dist.is_main() else None
    try:
        s = _build(cfg, run_dir, device, resume)
    except BaseException:
        if lock is not None:
            unlock(lock)
        raise
    s.lock = lock
    return s


def _build(cfg: Config, run_dir: Path, device, resume: bool) -> Setup:
    """setup()'s body, once the run directory is this process's: every check and load comes before config.yaml is
    written, so a resume that cannot work leaves the run's own config untouched."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

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
    # process 0 trains an organism or converts a GGUF file into the cache once, before the others look there
    model_path = model_source(cfg.model, cfg.progress) if dist.is_main() else None
    dist.barrier()
    model_path = model_path or model_source(cfg.model, cfg.progress)
    model, tokenizer = load_model(model_path, device)
    task = with_chat_template(task, tokenizer, cfg.apply_chat_template, cfg.model)  # chat models: prompts as user turns
    if probes is not None:
        probes.task = task  # probes are prompts too: rendered the same way
    if cfg.use_peft:
        model = lora.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    model.train()
    prompts = task.train_prompts()[: cfg.max_train_prompts]
    if not prompts:
        raise TaskError(f"task {cfg.task!r} has no training prompts")
    formatted = [task.format_prompt(p) for p in prompts]
    check_prompt_lengths(formatted, tokenizer, model, cfg.max_completion_length)
    # a character the tokenizer cannot encode would silently vanish from what the model sees (issue 21)
    check_encodable(tokenizer, formatted, cfg.train_file or "train_prompts")
    check_encodable(tokenizer, [task.format_prompt(q) for q, _ in task.eval_examples("val")[: cfg.eval_limit]],
                    "eval_examples('val')")
    pool, offline = list(range(len(prompts))), None
    if cfg.offline_labels or cfg.curriculum_fraction is not None:
        if resume and not (run_dir / "start_votes.json").is_file():
            raise SelfRLError(f"--resume {run_dir}: start_votes.json is missing; the start model's votes cannot be redone")
        # Process 0 votes, exactly as one process would, and writes start_votes.json; the others read that file,
        # so every process trains against the same labels and the same curriculum pool.
        votes = (model, tokenizer, task, prompts, cfg.start_votes or cfg.num_generations, cfg.max_completion_length,
                 cfg.temperature, cfg.seed, run_dir)
        if dist.is_main():
            start_model_votes(*votes, progress=cfg.progress)
        dist.barrier()
        labels, shares = start_model_votes(*votes, progress=False)
        offline = labels if cfg.offline_labels else None
        if cfg.curriculum_fraction is not None:
            pool = easiest(shares, cfg.curriculum_fraction)
    momentum = ref = momentum_state = ema_pairs = None
    anchored = cfg.method in ANCHORED  # mgrpo's momentum model, corewarding's teacher: an EMA copy of the policy
    if anchored and cfg.use_peft:  # the EMA runs over the adapters alone; the frozen base is shared
        lora.add_momentum_adapter(model)
        momentum_state, ema_pairs = lora.adapter_state(model, lora.MOMENTUM), lora.adapter_pairs(model)
    elif anchored:
        momentum = _frozen_copy(model)  # its tensors are paired with the policy's below, once any sharding is done
    if cfg.beta > 0 and not cfg.use_peft and cfg.method != "corewarding":  # corewarding's reference is its teacher
        ref = _frozen_copy(model)
    if cfg.fsdp and dist.world() > 1:  # the three sharded the same way: the EMA pairs each process's own slices
        mixed = "bf16" if cfg.dtype == "bfloat16" else "no"
        fsdp.shard(model, mixed, cfg.gradient_checkpointing)
        for frozen in (momentum, ref):
            if frozen is not None:
                fsdp.shard(frozen, mixed, trainable=False)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if momentum is not None:  # after sharding, which replaces the parameters: the EMA pairs the ones now held
        momentum_state, ema_pairs = dict(momentum.named_parameters()), (list(momentum.parameters()), list(model.parameters()))
    sampler = None
    if cfg.use_vllm:  # one engine per process (TRL's colocate mode), each on this process's GPU
        engine = vllm_backend.make_engine(model_path, cfg.vllm_gpu_memory_utilization, cfg.vllm_max_model_length,
                                          cfg.seed + dist.rank())
        sampler = vllm_backend.VLLMSampler(engine)
    trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the policy adapter only
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * cfg.max_steps)
    if cfg.lr_scheduler_type == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, cfg.max_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    stream = PromptStream(len(pool), cfg.seed)
    # Gold answers: the labelled oracle's reward and the after-step diagnostics take theirs here; the loop itself
    # gets a view of the task without them.
    audit = gold_audit(cfg, task)  # oracle always has one: its gold list is the reward's
    oracle_gold = audit.gold if cfg.method == "oracle" else None
    task = task if cfg.method == "oracle" else LabelFree(task, cfg.method)
    detector = canary = None
    if cfg.collapse_detector != "off":
        detector = CollapseDetector(cfg.detector_window, cfg.detector_min_signals)
        canary = Canary(task, prompts, cfg.detector_canary, cfg.detector_samples, cfg.seed, run_dir)
    s = Setup(cfg=cfg, run_dir=run_dir, task=task, model=model, tokenizer=tokenizer, momentum=momentum, ref=ref,
              momentum_state=momentum_state, ema_pairs=ema_pairs, sampler=sampler, optimizer=optimizer,
              scheduler=scheduler, stream=stream, prompts=prompts, pool=pool, offline=offline,
              oracle_gold=oracle_gold, audit=audit, probes=probes, canary=canary, detector=detector,
              ema_decay=cfg.ema_decay)
    if resume:
        ckpt = latest_checkpoint(run_dir)  # verifies checksums, falling back past corrupt ones with a warning
        if ckpt is None:
            raise SelfRLError(f"--resume {run_dir}: no intact checkpoint found (step_*/meta.json): the run stopped "
                              f"before its first save; delete {run_dir} to start it over")
        meta = rundir.load(s, ckpt)
        s.start_step, stream.cursor = meta["step"], meta["cursor"]
        if dist.is_main():
            prune_checkpoints(run_dir, None)  # clear a half-written step_*.tmp or half-deleted *.trash from the crash
            for name, step in read_pointers(run_dir).items():  # pins into the abandoned future are void
                if step > s.start_step:
                    set_pointer(run_dir, name, None)
        _replay_loop_state(s, [r for r in read_metrics(run_dir) if r["step"] <= s.start_step])
        if canary is not None and dist.is_main():
            canary.restore(s.start_step)
        log.info("resumed from %s (step %d)", ckpt, s.start_step)
    if dist.is_main():
        try:
            cfg.save(run_dir / "config.yaml")
        except OSError as e:
            raise SelfRLError(f"output_dir {run_dir} is not writable: {e.strerror}") from None
    return s


MAX_PROMPT_CHARS = 1_000_000  # a longer line is a broken file, not a prompt: refused before it is even tokenized


def check_prompt_lengths(prompts: list[str], tokenizer, model, max_completion_length: int) -> None:
    """Every formatted training prompt plus max_completion_length must fit the model's context (a longer one would
    fail deep inside the model, or take the machine's memory); the first that does not is one line naming it."""
    limit = getattr(model.config, "max_position_embeddings", None)
    for i, p in enumerate(prompts):
        if len(p) > MAX_PROMPT_CHARS:
            raise TaskError(f"training prompt {i} is {len(p):,} characters long (limit {MAX_PROMPT_CHARS:,})")
    if not limit:
        return
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[i] + max_completion_length > limit:
        raise TaskError(f"training prompt {i} is {lengths[i]} tokens; with max_completion_length {max_completion_length} "
                        f"it exceeds the model's context of {limit} tokens ({prompts[i][:40]!r}...)")


def model_source(model: str, progress: bool = True) -> str:
    """A loadable HF directory or hub id for `model`: "organism", "organism2", "organism:TASK" -> that organism,
    trained into the cache on first use (selfrl/organism.py); "smollm2", a .gguf file -> its cached conversion
    (selfrl/gguf.py); anything else unchanged."""
    from selfrl.gguf import resolve_model_source

    return resolve_model_source(resolve_organism(model, progress=progress), progress=progress)


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


def shared_accuracy(s: Setup, examples: list) -> float:
    """Greedy accuracy on `examples`; with several processes each scores a share (none waits idle) and the correct
    answers are summed, so every process holds the same number."""
    if not examples:
        raise SelfRLError("accuracy over zero examples: nothing to score (an empty split, or a limit of 0)")
    mine = examples[dist.rank() :: dist.world()]
    acc = greedy_accuracy(s.model, s.tokenizer, s.task, mine, s.cfg.max_completion_length, s.cfg.eval_batch_size)[0] \
        if mine else 0.0  # more processes than examples: this one scores none
    return dist.all_sum(round(acc * len(mine))) / len(examples)  # correct answers over all of them 


def probe_scores(s: Setup) -> dict:
    """The gate's probe scores, computed on process 0 and handed to all: every process then makes the same gate
    decision (promote, roll back, stop) from the same numbers."""
    with fsdp.gathered(s.model):
        return dist.from_main(lambda: s.probes.score(s.model, s.tokenizer))


def shared_sampled(s: Setup, examples: list, step: int) -> dict:
    """val/mean@k and val/maj@k (k = eval_samples at eval_temperature), each process sampling a share. The samples
    come from their own RNG stream (seed, step), forked off the run's, so evaluating never moves training."""
    mine = examples[dist.rank() :: dist.world()]
    device = next(s.model.parameters()).device
    mean = maj = 0.0
    if mine:
        with own_rng(device, int(np.random.default_rng([s.cfg.seed, step, 7]).integers(2**62))):
            mean, maj, _ = sampled_accuracy(s.model, s.tokenizer, s.task, mine, s.cfg.eval_samples,
                                            s.cfg.max_completion_length, s.cfg.eval_temperature, s.cfg.eval_batch_size)
    n = len(examples)
    return {"val/mean@k": dist.all_sum(mean * len(mine)) / n, "val/maj@k": dist.all_sum(maj * len(mine)) / n}


def canary_check(s: Setup, step: int) -> dict:
    """The canary/* signals (selfrl/canary.py): the policy, and an anchored method's momentum model / teacher, vote on
    the canary prompts. Computed on process 0 and handed to all, so every process's detector decides the same."""
    cfg = s.cfg

    def check() -> dict:
        t0 = time.perf_counter()
        sampling = (cfg.max_completion_length, cfg.temperature, cfg.eval_batch_size)
        policy, anchor = s.canary.vote(s.model, s.tokenizer, step, 0, *sampling), None
        if cfg.method in ANCHORED:
            with as_momentum(s) as m:
                anchor = s.canary.vote(m, s.tokenizer, step, 1, *sampling)
        return s.canary.check(step, policy, anchor, time.perf_counter() - t0)

    with whole(s):
        return dist.from_main(check)


def evaluate(s: Setup, step: int) -> dict:
    with fsdp.gathered(s.model):
        return _evaluate(s, step)


def _evaluate(s: Setup, step: int) -> dict:
    val = s.task.eval_examples("val")[: s.cfg.eval_limit]
    out = {"val/accuracy": shared_accuracy(s, val), **(probe_scores(s) if s.probes is not None else {})}
    if s.cfg.eval_samples:
        out.update(shared_sampled(s, val, step))
    if s.cfg.early_stopping_patience is not None:  # SRT mitigation 1: a small LABELLED split, disjoint from val
        held = s.task.eval_examples(s.cfg.early_stopping_split)[: s.cfg.early_stopping_examples]
        out["stop/accuracy"] = shared_accuracy(s, held)
    return out


def open_logger(s: Setup, resume: bool):
    """metrics.jsonl (+ report_to backends) on process 0; a null logger elsewhere."""
    if not dist.is_main():
        return NullLogger()
    return MetricsLogger(s.run_dir, s.cfg.report_to, truncate_after=s.start_step if resume else None)


def gold_audit(cfg: Config, task) -> GoldAudit | None:
    """Label diagnostics for the step's metrics, or None (gold_diagnostics off, or a task without gold answers)."""
    if cfg.method == "oracle":
        return GoldAudit(task)  # the labelled ceiling: a task without gold answers fails here, clearly
    if cfg.gold_diagnostics:
        try:
            return GoldAudit(task)
        except TaskError as e:
            log.info("gold diagnostics off: %s", e)
    return None


def begin(s: Setup, logger) -> None:
    """Step 0 of a new run: the start model's evaluation; with the gate, the detector's rollback or early stopping,
    the start model saved as the first promoted / healthy / best-so-far checkpoint."""
    cfg = s.cfg
    first = evaluate(s, 0)
    if s.canary is not None:
        first.update(canary_check(s, 0))
    if s.probes is not None:
        # The start model is the gate's baseline and the first promoted checkpoint: the rollback target until
        # a trained checkpoint passes the gate.
        if dist.is_main():
            s.probes.set_baseline(first)
        first.update({"safety/alarm": 0, "gate/promoted": 0})
    if "stop/accuracy" in first:
        s.stop_best = (first["stop/accuracy"], 0)
    first_save = s.probes is not None or cfg.collapse_detector in ("rollback", "stop") or cfg.early_stopping_patience
    if first_save:
        rundir.write_shards(s, 0)  # fsdp: every process writes its shards first (a no-op otherwise)
    if dist.is_main():  # process 0 writes for all; the others read these files after the barrier
        if first_save:
            save(s, 0, {**first, "healthy": 1})
            for name in ["healthy"] + ["promoted"] * (s.probes is not None):
                set_pointer(s.run_dir, name, 0)
        if "stop/accuracy" in first:
            set_pointer(s.run_dir, "early_stop", 0)
    dist.barrier()
    if s.detector is not None:
        s.detector.update({"step": 0, **first})  # the start model's canary check: the canary signals' baseline
    logger.log(0, first)
    s.last_val = first["val/accuracy"]


def after_step(s: Setup, step: int, metrics: dict, logger, skipped_why: str | None) -> str | None:
    """Everything after a step's update, in order: skipped-step accounting, the collapse detector (issue 3) and its
    response, evaluation, early stopping (SRT mitigation 1: uses labels, reported as such), the misevolution gate
    (issue 7), logging, saving. Returns why the run stops now, or None."""
    cfg = s.cfg
    s.skipped_in_a_row = s.skipped_in_a_row + 1 if skipped_why else 0
    if skipped_why:
        log.warning("step %d: non-finite %s; step skipped (%d in a row)", step, skipped_why, s.skipped_in_a_row)
        s.unhealthy_since_save = True
    stop_reason = None
    if s.detector is not None:  # label-free collapse detection: alarm, and with rollback/stop restore healthy weights
        if step % cfg.detector_every == 0:
            metrics.update(canary_check(s, step))
        reading = s.detector.update(metrics)
        metrics.update({"detector/signals": len(reading.fired), "detector/alarm": int(reading.alarm)})
        s.unhealthy_since_save |= bool(reading.fired)
        if reading.onset:
            log.info("step %d: collapse alarm: %s", step, ", ".join(reading.fired))
        if reading.alarm:
            if cfg.collapse_detector in ("rollback", "stop"):
                target, stop = detector_response(s, step)
                metrics["detector/rolled_back_to"] = target
                stop_reason = "collapse detector" if stop else None
    save_now = bool(cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps or bool(stop_reason)
    if step % cfg.eval_every == 0 or step == cfg.max_steps or stop_reason:
        metrics.update(evaluate(s, step))
    elif save_now and s.probes is not None:
        metrics.update(probe_scores(s))  # the gate judges each checkpoint by its own scores
    if "stop/accuracy" in metrics and not stop_reason:  # early stopping on a small labelled split
        if metrics["stop/accuracy"] > s.stop_best[0]:
            s.stop_best, s.stop_waited, save_now = (metrics["stop/accuracy"], step), 0, True
        else:
            s.stop_waited += 1
        if s.stop_waited >= cfg.early_stopping_patience:
            rollback(s, s.stop_best[1])
            metrics.update({**evaluate(s, step), "stop/restored": s.stop_best[1]})
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
    s.last_val = metrics.get("val/accuracy", s.last_val)
    if s.skipped_in_a_row >= cfg.max_skipped_steps:
        last = latest_checkpoint(s.run_dir, verify=False)
        raise SelfRLError(f"step {step}: {s.skipped_in_a_row} steps in a row had a non-finite loss or gradient; "
                          f"stopping (last checkpoint kept: {last.name if last else 'none'})")
    if save_now:
        momentum = s.momentum_state.values() if s.momentum_state is not None else None  # full copy or adapter
        if not fsdp.is_sharded(s.model):  # sharded, each process holds its own slices: no replicas to compare
            dist.check_replicas(step, {"policy": s.model.parameters(), "momentum": momentum})  # process 0 saves for all
        if "gate/rolled_back_to" in metrics:  # every process restores the promoted weights before the save
            rollback(s, metrics["gate/rolled_back_to"])
        rundir.write_shards(s, step)
        if dist.is_main():
            save_and_pin(s, step, metrics, regressed, healthy=not s.unhealthy_since_save)
        dist.barrier()  # a resume on any process reads what process 0 wrote
        s.unhealthy_since_save = False
        if regressed and cfg.gate_action == "stop":  # on every process, once the checkpoint is written
            raise SelfRLError(f"step {step}: safety gate: {describe(regressed)} (tolerance {cfg.probe_tolerance}); "
                              f"stopped; step_{step:06d} kept unpromoted, promoted checkpoint: step "
                              f"{metrics['gate/promoted']}")
    if stop_reason:
        log.info("step %d: %s: stopped; the final checkpoint is step_%06d", step, stop_reason, step)
    return stop_reason


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
