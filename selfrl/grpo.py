"""selfrl's RL loop: momentum-anchored GRPO (M-GRPO) and the majority-vote family it stabilises.

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
    prompts from `task.train_prompts()`; gold answers are held by the `oracle` method alone (`Setup.oracle_gold`,
    clearly a labelled method) and read by `GoldAudit` (selfrl/run.py), whose diagnostics are computed after the step.
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
(vote over `num_votes`, train on the first `num_generations`), `intuitor` (self-certainty reward), `mgrpo`, and
`corewarding` (Co-rewarding-II, arXiv 2508.00410, its nearest rival: the momentum copy is an EMA *teacher* whose own
N rollouts alone vote, which is also the KL reference, updated at a rate cosine-annealed from 0.01 to 1e-5 as in the
authors' public code (tmlr-group/Co-rewarding, sliding_average alpha_start/alpha_end); methods.md §9 gives the
paper's description, which we follow, and the public code's schedule is the one thing we take from it).

Shapes (one vocabulary, derived once by `Config.sizes`): B prompts, G pooled voters per prompt, M trained policy
rollouts per prompt, N momentum rollouts per prompt, T response tokens, V vocabulary. The policy samples G - N per
prompt; all vote, the first M are trained (M = G - N except for ttrl, whose extra samples only vote).

How a step reads: `grpo_step` below, top to bottom (sample -> IQR filter -> vote -> rewards -> advantages ->
update -> EMA -> metrics). Run control (evaluation, detector, early stopping, safety gate, checkpoints, resume)
is selfrl/run.py, called by name from `train`.

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
    writes checkpoints; validation is split across the processes. The options that decide from a whole step
    (online_filter, offline_labels, curriculum_fraction, probes, early stopping, detector rollback/stop) decide from
    every process's votes or on process 0 and hand the decision to all (README "Many processes").
  * Past one GPU's memory, `fsdp: true` shards the policy, momentum model and reference over the processes
    (selfrl/fsdp.py, docs/scale.md); the same launch. accelerate's DeepSpeed and FSDP plugins are refused.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from selfrl import core, fsdp, lora, run, rundir, vllm_backend
from selfrl import distributed as dist
from selfrl.errors import SelfRLError
from selfrl.grpo_config import Config, Sizes
from selfrl.rollout import Rollouts, cat_rollouts, encode_prompts, generate, score, score_once
from selfrl.run import Setup, as_momentum, as_reference


def rollouts(s: Setup, which: str, batch: dict, k: int, noise: torch.Tensor | None = None,
             seeds: list[int] | None = None) -> Rollouts:
    """k samples per prompt from the policy or ("momentum") the momentum model's current weights, by the HF sampler
    (from `noise` when seed_per_prompt gives each prompt its own numbers) or, with use_vllm, by the engine after
    loading it with exactly those weights (selfrl/vllm_backend.py)."""
    cfg = s.cfg
    view = as_momentum(s) if which == "momentum" else fsdp.gathered(s.model)  # sharded: whole for the block
    with view as model:
        if s.sampler is None:
            return generate(model, s.tokenizer, batch, k, cfg.max_completion_length, cfg.temperature, noise=noise)
        adapter = lora.MOMENTUM if which == "momentum" else lora.POLICY  # read only with LoRA
        s.sampler.load(vllm_backend.engine_weights(model, adapter))
        return s.sampler.generate(model, s.tokenizer, batch, k, cfg.max_completion_length, cfg.temperature, seeds=seeds)


def prompt_noise(seed: int, step: int, places: range, role: int, k: int, T: int, device) -> torch.Tensor:
    """(len(places)*k, T) uniforms for `generate`'s sampling: the k rows of the prompt at each place in the data stream
    from their own stream (seed, step, place, role); role 0 is the policy's rollouts, 1 the momentum model's."""
    rows = [np.random.default_rng([seed, step, p, role]).random((k, T), dtype=np.float32) for p in places]
    return torch.from_numpy(np.concatenate(rows)).to(device)


def sample_batch(s: Setup, step: int, sizes: Sizes, amp) -> tuple[list[int], Rollouts, Rollouts | None, int]:
    """This step's prompts and their rollouts: G - N per prompt from the policy, N from the momentum model's current
    EMA weights. With `online_filter` (SRT mitigation 4) a prompt whose pooled vote has a majority share below the
    threshold is dropped and further prompts are drawn until the batch is full or `online_filter_max_draws` draws
    were made (then the step trains on the prompts that passed). Returns (ids, policy, momentum, prompts drawn by
    all processes). With several processes each samples its share of every draw (B here is prompts_per_step /
    processes); the filter's keep-or-draw decisions are made from every process's votes, as one process would make
    them, and the kept prompts are then shared out evenly (`share_out`)."""
    cfg, tok = s.cfg, s.tokenizer
    B, G, _, N = sizes  # all samples of a prompt are drawn on this process, so its vote is local
    P = G - N  # the policy's samples per prompt
    W, lo = dist.world(), dist.rank() * B
    device = next(s.model.parameters()).device
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # per-step sampling seed: a resume replays the step exactly
    draws, drawn, kept = [], 0, 0  # draws: (ids, policy, momentum) kept from each draw on this process
    limit = B * W * cfg.online_filter_max_draws  # past it, keep drawing (up to 10x) only while no prompt has passed
    while kept < B * W and (drawn < limit or (not kept and drawn < 10 * limit)):
        places = range(s.stream.cursor + lo, s.stream.cursor + lo + B)  # this share's places in the data stream
        draw = [s.pool[j] for j in s.stream.next(B * W)][lo : lo + B]  # questions only: no answers
        drawn += B * W
        batch = encode_prompts(tok, [s.task.format_prompt(s.prompts[i]) for i in draw], device)
        pol_noise = mom_noise = None
        if cfg.seed_per_prompt:  # each prompt samples from its own numbers: the same rollouts on 1 process or many
            pol_noise = prompt_noise(cfg.seed, step, places, 0, P, cfg.max_completion_length, device)
            mom_noise = prompt_noise(cfg.seed, step, places, 1, N, cfg.max_completion_length, device) if N else None
        pol_seeds = mom_seeds = None
        if s.sampler:  # vLLM: each prompt's requests seeded from (seed, step, place, role), as the HF sampler's noise
            pol_seeds, mom_seeds = (vllm_backend.request_seeds(cfg.seed, step, places, role) for role in (0, 1))
        with amp:
            pol = rollouts(s, "policy", batch, P, pol_noise, pol_seeds)
            mom = rollouts(s, "momentum", batch, N, mom_noise, mom_seeds) if N else None
        keep = list(range(B))
        if cfg.online_filter is not None:  # judged on the whole unfiltered pool, before the IQR filter
            texts = [pol.texts[i * P : (i + 1) * P] + (mom.texts[i * N : (i + 1) * N] if N else []) for i in range(B)]
            shares = [core.vote_texts(row, s.task.extract_answer, s.task.is_equivalent)[2] for row in texts]
            passed = [j for part in dist.gather([x >= cfg.online_filter for x in shares]) for j in part]  # place order
            chosen = [j for j, ok in enumerate(passed) if ok][: B * W - kept]  # the first that passed, as 1 process
            kept += len(chosen)
            keep = [j - lo for j in chosen if lo <= j < lo + B]
        else:
            kept += B * W
        draws.append(([draw[i] for i in keep], pol.prompts(keep, P), mom.prompts(keep, N) if N else None))
    if not kept:
        raise SelfRLError(f"step {step}: online_filter: no prompt reached majority share {cfg.online_filter} in "
                          f"{drawn} prompts drawn; lower online_filter")
    if cfg.online_filter is not None and W > 1:
        draws = share_out(draws, tok.pad_token_id, device)
    ids = [i for d in draws for i in d[0]]
    pol = draws[0][1] if len(draws) == 1 else cat_rollouts([d[1] for d in draws], tok.pad_token_id)
    mom = None if not N else draws[0][2] if len(draws) == 1 else cat_rollouts([d[2] for d in draws], tok.pad_token_id)
    return ids, pol, mom, drawn


def _to(r: Rollouts | None, device) -> Rollouts | None:
    if r is None:
        return None
    return dataclasses.replace(r, **{f.name: getattr(r, f.name).to(device) for f in dataclasses.fields(r)
                                     if torch.is_tensor(getattr(r, f.name))})


def share_out(draws: list, pad_id: int, device) -> list:
    """The online filter's kept prompts, every process's, in the order one process would hold them (draw by draw,
    place by place), cut into contiguous shares that differ by at most one prompt: each process's compute stays
    balanced however the passing prompts fell. Rollouts travel as CPU tensors: token ids and per-token floats,
    small next to the weights. A process gets no prompt only when fewer passed than there are processes."""
    mine = [(ids, _to(pol, "cpu"), _to(mom, "cpu")) for ids, pol, mom in draws]
    parts = dist.gather(mine)  # parts[rank][draw]
    flat = [parts[r][d] for d in range(len(draws)) for r in range(len(parts)) if parts[r][d][0]]
    if not flat:  # no prompt passed anywhere: sample_batch has raised already
        return draws
    ids = [i for f in flat for i in f[0]]
    pol = cat_rollouts([f[1] for f in flat], pad_id)
    mom = cat_rollouts([f[2] for f in flat], pad_id) if flat[0][2] is not None else None
    W, n = dist.world(), len(ids)
    lo, hi = (dist.rank() * n) // W, ((dist.rank() + 1) * n) // W
    P, N = len(pol.texts) // n, (len(mom.texts) // n if mom is not None else 0)
    mine = list(range(lo, hi))
    return [([ids[i] for i in mine], _to(pol.prompts(mine, P), device), _to(mom.prompts(mine, N), device) if N else None)]


@dataclass
class StepOut:
    """What a step hands back: its local metrics and their averaging weights, and what the label diagnostics read."""

    metrics: dict
    weights: dict  # metric -> how many items it averages on this process (the global mean weights them)
    ids: list[int]  # the step's prompt indices
    labels: list[str | None]  # the label each prompt's rollouts were rewarded against
    answers: list[list[str | None]]  # (B, G) each voter's extracted answer
    keep_train: list[list[bool]]  # (B, M) the trained rollouts the IQR filter kept
    skipped_why: str | None  # "loss" or "gradient" when a non-finite one skipped the update, else None


def grpo_step(s: Setup, step: int, sizes: Sizes, amp) -> StepOut:
    """One M-GRPO step (methods.md §0-1); srt, ttrl, intuitor and oracle differ only in N = 0 and the reward."""
    cfg, model, task = s.cfg, s.model, s.task
    eq, device = task.is_equivalent, next(model.parameters()).device
    _, G, M, N = sizes
    P = G - N  # policy samples per prompt; the first M are trained
    # 1. prompts and rollouts (policy + momentum; online filter); b prompts this step
    ids, pol, mom, drawn = sample_batch(s, step, sizes, amp)
    b = len(ids)
    train_rows = torch.arange(b * P).view(b, P)[:, :M].reshape(-1)  # (b*M,) the policy rollouts that are trained
    trained = pol.take(train_rows)
    resp_mask = trained.response_mask.float()  # (b*M, T)
    # 2. entropy filter over the pooled group [trained | untrained votes | momentum], on each voter's entropy as
    #    recorded while sampling it: no forward pass is spent on it
    H = core.masked_mean(pol.entropy, pol.response_mask.float(), dim=1).view(b, P)  # (b, P)
    if N:
        H = torch.cat([H, core.masked_mean(mom.entropy, mom.response_mask.float(), dim=1).view(b, N)], dim=1)  # (b, G)
    keep = core.iqr_keep_mask(H, cfg.iqr_k).cpu() if cfg.iqr_filter and b else torch.ones(b, G, dtype=torch.bool)
    # 3. the vote among the survivors (every method votes: the share is a label-free signal the detector reads,
    #    even where the reward is not the vote)
    texts = [pol.texts[i * P : (i + 1) * P] + (mom.texts[i * N : (i + 1) * N] if N else []) for i in range(b)]
    voters = keep.clone()
    if cfg.method == "corewarding":  # Co-rewarding-II: the label is the EMA teacher's own vote; the policy abstains
        voters[:, :P] = False
    first = P if N and cfg.vote_ties == "momentum" else 0  # ties to the class seen first, from this voter on
    votes = [core.vote_texts(row, task.extract_answer, eq, krow, first) for row, krow in zip(texts, voters.tolist())]
    answers, labels, shares = [v[0] for v in votes], [v[1] for v in votes], [v[2] for v in votes]
    if s.oracle_gold is not None:
        labels = [s.oracle_gold[i] for i in ids]  # labelled method: the ceiling, never label-free
    elif s.offline is not None:
        labels = [s.offline[i] for i in ids]  # SRT mitigation 2: the start model's frozen vote
    # 4. rewards for the trained policy rollouts only; advantages among the kept ones
    if cfg.method == "intuitor":  # methods.md §3: mean self-certainty over response tokens, current policy, detached
        rewards = core.masked_mean(trained.certainty, resp_mask, dim=1).view(b, M).cpu()
    else:
        rewards = torch.tensor([core.match_rewards(row[:M], lbl, eq) for row, lbl in zip(answers, labels)]).view(b, M)
    keep_train = keep[:, :M]
    adv = core.group_advantages(rewards, keep_train).to(device).reshape(-1)  # (b*M,)
    loss_mask = resp_mask * keep_train.reshape(-1, 1).to(device).float()  # dropped rows leave the loss
    prompt_of = torch.arange(b, device=device).repeat_interleave(M)  # (b*M,) each trained row's prompt
    anchor_kl = float("nan")
    if N and b:  # how far the policy has moved from its anchor, on the trained rollouts (a logged, label-free signal)
        with torch.no_grad(), amp, as_momentum(s) as momentum:
            k_logp, _, _ = score(momentum, trained, cfg.temperature, prompt_of, stats=False)
        anchor_kl = core.masked_mean(core.k3_kl(trained.logp, k_logp), resp_mask).item()
    # 5. GRPO update (one per rollout batch: old log-probs are the current ones, detached), with grad only through
    #    the rows that carry gradient: a filtered row has no loss tokens, and with beta = 0 a row whose advantage
    #    is 0 adds nothing either. Their tokens stay in the token-mean's denominator (n_tokens), so the loss and
    #    its gradient are those of the whole batch. At least one row runs, so every step has the same autograd path;
    #    a process the online filter left without prompts (b = 0) runs none and adds a zero gradient to the sum.
    live = (loss_mask.sum(1) > 0) & ((adv != 0) | (cfg.beta > 0))
    live = live.nonzero().squeeze(1) if live.any() else torch.zeros(min(b, 1), dtype=torch.long, device=device)
    part = trained.take(live.cpu())
    ref_logp = None
    if cfg.beta > 0 and b:
        with torch.no_grad(), amp, as_reference(s) as ref:
            ref_logp, _, _ = score(ref, part, cfg.temperature, prompt_of[live], stats=False)
    #    num_iterations > 1 (TRL's name, GRPO's mu): more optimizer passes over these rollouts, with the sampling-time
    #    log-probs as the old ones, so the ratio moves and epsilon clips. With several processes the denominator is
    #    the global token count: each process's loss is its share of the 1-process loss (selfrl/distributed.py).
    old_logp = trained.logp[live] if cfg.num_iterations > 1 else None
    updates, skipped = 0, False
    for _ in range(cfg.num_iterations):
        n_tokens = dist.all_sum(loss_mask.sum()).clamp(min=1)
        if b:
            with amp:
                if cfg.fsdp:  # one forward pass per process: a sharded forward is a collective (rollout.score_once)
                    logp = score_once(model, part, cfg.temperature)
                else:
                    logp, _, _ = score(model, part, cfg.temperature, prompt_of[live], stats=False)  # (n, T) with grad
                loss, lm = core.policy_loss(logp, logp.detach() if old_logp is None else old_logp, adv[live],
                                            loss_mask[live], cfg.epsilon, cfg.beta, ref_logp, n_tokens=n_tokens)
        else:  # nothing to score here: a zero share of the loss, and the same collectives as the other processes
            loss = torch.zeros((), device=device, requires_grad=True)
            if fsdp.is_sharded(model):  # ... a sharded model's forward and gradient reduction included
                loss = loss + 0 * model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device)).logits.sum()
            lm = {"loss/pg": 0.0, "loss/kl": 0.0, "loss/clip_frac": 0.0}
        s.optimizer.zero_grad(set_to_none=True)
        grad_norm = float("nan")
        if math.isfinite(dist.all_sum(loss.item())):  # a non-finite loss or gradient must not reach the weights
            loss.backward()  # sharded (fsdp): the backward itself sums each process's gradient slices
            if not fsdp.is_sharded(model):
                dist.all_reduce_grads_(model.parameters())  # then every process clips and steps on the global gradient
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()  # a DTensor if sharded
        skipped = not math.isfinite(grad_norm)
        if skipped:  # this pass and the ones after it are skipped
            s.optimizer.zero_grad(set_to_none=True)
            break
        s.optimizer.step()
        updates += 1
    if updates:
        s.scheduler.step()  # the schedule counts training steps (rollout batches), not passes
    # 6. momentum update after the optimizer step, every step that updated the policy
    if (rates := cfg.anchor_rate_schedule()) is not None:  # corewarding's teacher; mgrpo with ema_decay_end
        s.ema_decay = 1.0 - core.cosine_anneal(step, cfg.max_steps, *rates)
    if s.ema_pairs is not None and updates:
        ema, src = s.ema_pairs  # sharded: each process's own slices of both, so no communication
        core.ema_update_(fsdp.local_shards(ema), [p.detach().float() for p in fsdp.local_shards(src)], s.ema_decay)
    # 7. metrics (label-free; the label diagnostics are added by the caller, after the step)
    b_all = dist.all_sum(b)  # the step's prompts on every process
    kept_r = rewards[keep_train]
    unanimous = [bool((r[k] == r[k][0]).all()) if k.any() else True for r, k in zip(rewards, keep_train)]
    metrics = {
        "reward/pseudo": kept_r.mean().item() if kept_r.numel() else 0.0,
        "vote/majority_share": float(np.mean(shares)) if b else 0.0,  # b = 0: weight 0 in the global mean
        "vote/unanimous_groups": float(np.mean(unanimous)) if b else 0.0,
        "vote/answer_diversity": len(dist.union({lbl for lbl in [v[1] for v in votes] if lbl is not None}))
        / max(b_all, 1),
        "policy/entropy": core.masked_mean(trained.entropy, resp_mask).item(),
        "policy/self_certainty": core.masked_mean(trained.certainty, resp_mask).item(),
        "policy/response_length": resp_mask.sum(1).mean().item(),
        "filter/dropped": int((~keep).sum()),
        "filter/dropped_frac": float((~keep).float().mean()),
        # of the trained policy rollouts alone: the pooled group's quartiles are mostly the momentum model's when it
        # casts most votes, so a policy sharper than its anchor can lose most of its trained rollouts to the filter
        "filter/trained_dropped_frac": float((~keep_train).float().mean()) if b else 0.0,
        "filter/prompts_kept": b_all / drawn if cfg.online_filter is not None else None,
        "anchor/kl": anchor_kl if N else None,
        "anchor/ema_decay": s.ema_decay if N else None,
        **lm,
        "grad/norm": grad_norm,
        "train/skipped": int(skipped),
        "lr": s.scheduler.get_last_lr()[0],
    }
    n_resp = resp_mask.sum().item()
    weights = {"reward/pseudo": kept_r.numel(), "vote/majority_share": b, "vote/unanimous_groups": b,
               "policy/entropy": n_resp, "policy/self_certainty": n_resp, "policy/response_length": b * M,
               "filter/dropped_frac": b * G,
               "filter/trained_dropped_frac": b * M, "anchor/kl": n_resp, "reward/label_accuracy": b,
               "reward/true": int(keep_train.sum())}
    why = ("loss" if not torch.isfinite(loss) else "gradient") if skipped else None
    return StepOut(metrics, weights, ids, labels, answers, keep_train.tolist(), why)


def train(cfg: Config, resume: bool = False) -> Path:
    """Run (or resume) a training run; returns the run directory."""
    s = run.setup(cfg, resume)
    try:
        return _loop(s, resume)
    finally:
        rundir.release(s)


def _loop(s: Setup, resume: bool) -> Path:
    cfg = s.cfg  # as resolved for this launch (several processes turn seed_per_prompt on)
    sizes = cfg.sizes(dist.world())
    audit = s.audit
    logger = run.open_logger(s, resume)
    amp = torch.autocast(next(s.model.parameters()).device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    if not resume:
        run.begin(s, logger)
    bar = tqdm(range(s.start_step + 1, cfg.max_steps + 1), desc=f"{cfg.method}",
               disable=not cfg.progress or not dist.is_main())
    for step in bar:
        t0 = time.perf_counter()
        out = grpo_step(s, step, sizes, amp)
        if audit is not None:  # label diagnostics, after the step: nothing here feeds a reward
            out.metrics.update(audit.metrics(out.ids, out.labels, out.answers, out.keep_train))
        # with several processes, each mean becomes the global one, weighted by the items it averages
        metrics = dist.global_metrics(out.metrics, weights=out.weights,
                                      sums=("filter/dropped", "loss/pg", "loss/kl", "loss/clip_frac"))
        metrics["time/step_s"] = time.perf_counter() - t0  # the training step alone, evaluation excluded
        stop_reason = run.after_step(s, step, metrics, logger, out.skipped_why)
        bar.set_postfix(r=f"{metrics['reward/pseudo']:.2f}", H=f"{metrics['policy/entropy']:.2f}", val=f"{s.last_val:.2f}")
        if stop_reason:
            break
    logger.close()
    return s.run_dir


