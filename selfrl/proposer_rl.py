"""The question writer trained with GRPO on R-Zero's uncertainty reward, alternating with the solver's label-free
training (issue 19; methods.md §4 MM-UPT, §9 R-Zero). `selfrl synth CONFIG` runs this loop when the config sets
`solver_config` (a `selfrl train` YAML); `proposer_training: true` trains the writer, false keeps it fixed (the
control: the same rounds, the same solver, a writer that does not learn).

What we keep from R-Zero
  * Two copies of one start model: the proposer (challenger) writes questions, the solver answers them.
  * The proposer's reward: r = 1 − 2·|p̂ − ½|, p̂ the solver's share agreeing with its own majority over `num_votes`
    answers; 0 for a question that fails a filter (unparseable, length, duplicate of a training question, of an
    earlier round's question or of another in its batch, contaminated). `synth.judge` computes it
    (selfrl/synth_filters.py proposer_rewards).
  * GRPO on the proposer: `num_generations` questions per writing prompt form a group; group-normalised advantages
    (core.group_advantages), token-mean clipped surrogate (core.policy_loss), no KL. One update per batch.
  * Rounds: the proposer trains against the current solver, then writes the round's questions, which the solver's
    answerability band filters; the solver then trains on every question kept so far.

What we change
  * The solver's training is selfrl's own label-free loop (`selfrl.grpo.train`, any method of `solver_config`),
    not R-Zero's GRPO on filtered majority labels; each round is one run of `solver_steps` steps started from the
    previous round's last policy weights. Its optimizer state (and, for mgrpo, its momentum model) restarts each
    round: say srt (no momentum) when that matters.
  * R-Zero's BLEU-cluster repetition penalty is replaced by the synth filters' exact and near-duplicate tests
    (reward 0), which also reach back to earlier rounds' questions.

Files in output_dir:
    proposer/round_R/     the proposer after round R's GRPO steps (HF directory, optimizer.pt, meta.json last)
    rounds/round_R/       that round's written questions: candidates.jsonl, questions.jsonl, report.json (last)
    solver/round_R/       the solver's run for round R (a `selfrl train` run directory)
    questions.jsonl       every kept question so far (the solver's train_file), one line each with its round
    proposer.jsonl        one line of metrics per proposer step
    report.json/.md       the counts over all rounds and each round's figures; its presence marks a finished run

Resume: run the same command again. Finished phases are found by their files (each written to a temporary name and
renamed), an interrupted solver run resumes from its last checkpoint (`grpo.train(resume=True)`), and an
interrupted proposer phase restarts from its round's start. Every sample is drawn from a seed derived from (seed,
round, step), so a resumed loop writes what an uninterrupted one would. A changed config is refused, naming the
first field that differs.

Launch: 1 CPU, the organism: `python -m selfrl.lab.synth_study --only proposer --seeds 0` (about 3 minutes; it
runs `selfrl synth` with the `synth:` and `proposer:` fields of selfrl/lab/configs/synth_study.yaml and its
`solver:` fields as solver_config); 1 GPU: device cuda in the synth config and in the solver's.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from selfrl import core
from selfrl.errors import SelfRLError
from selfrl.organism import resolve_organism
from selfrl.rollout import encode_prompts, generate, score


# ------------------------------------------------------------------------------------------------- one GRPO step
def proposer_step(proposer, optimizer, tokenizer, prompts: list[str], shown: list[list[str]], cfg, judge_fn,
                  max_grad_norm: float = 1.0) -> tuple[list[dict], dict]:
    """One GRPO step on the question writer. prompts: B rendered writing prompts, each sampled cfg.num_generations
    (G) times; judge_fn(texts, shown) -> rows with "proposer_reward" (synth.judge bound to the solver). Returns the
    judged rows and the step's metrics."""
    device = next(proposer.parameters()).device
    B, G = len(prompts), cfg.num_generations
    proposer.eval()
    ro = generate(proposer, tokenizer, encode_prompts(tokenizer, prompts, device), G, cfg.max_completion_length,
                  cfg.temperature)  # B*G rows, prompt-major
    rows = judge_fn(ro.texts, shown)
    rewards = torch.tensor([r["proposer_reward"] for r in rows], dtype=torch.float32).view(B, G)  # (B, G)
    adv = core.group_advantages(rewards, torch.ones(B, G, dtype=torch.bool)).reshape(-1).to(device)  # (B*G,)
    mask = ro.response_mask.float()  # (B*G, T)
    proposer.train()
    prompt_of = torch.arange(B, device=device).repeat_interleave(G)  # (B*G,) each row's prompt
    logp, _, _ = score(proposer, ro, cfg.temperature, prompt_of, stats=False)  # (B*G, T) with grad
    loss, lm = core.policy_loss(logp, logp.detach(), adv, mask, epsilon=0.2, beta=0.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(proposer.parameters(), max_grad_norm).item()
    optimizer.step()
    proposer.eval()
    metrics = {"proposer/reward": rewards.mean().item(),
               "proposer/kept": sum(r["reason"] is None for r in rows) / len(rows),
               "proposer/parsed": sum(r["question"] is not None for r in rows) / len(rows),
               "proposer/voted": sum(r["majority_share"] is not None for r in rows) / len(rows),
               "proposer/response_length": mask.sum(1).mean().item(), **lm, "grad/norm": grad_norm}
    return rows, metrics


# ------------------------------------------------------------------------------------------------------ helpers
def _save_model(model, tokenizer, optimizer, out: Path, meta: dict) -> None:
    """An HF directory plus optimizer.pt and meta.json, written beside `out` and renamed (never half there)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _check_same_config(out: Path, cfg) -> None:
    """A loop resumes only under the config it started with; the first differing field is named."""
    saved = out / "synth_config.json"
    now = dataclasses.asdict(cfg)
    if not saved.is_file():
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(now, indent=2))
        return
    was = json.loads(saved.read_text())
    for key, value in now.items():
        if key not in ("progress", "torch_threads") and was.get(key) != value:
            raise SelfRLError(f"{out} holds a proposer loop started with {key}={was.get(key)!r}, not {value!r}; "
                              "run it again with its own config to resume, or choose another output_dir")


def solver_round(cfg, out: Path, r: int, start_model: str, train_file: Path) -> Path:
    """Round r's solver run (selfrl.grpo.train on every question kept so far, from `start_model`); resumed when a
    checkpoint of it exists. Returns its last policy directory."""
    from selfrl.checkpoint import latest_checkpoint, list_checkpoints
    from selfrl.grpo import train
    from selfrl.grpo_config import load_config

    run_dir = out / "solver" / f"round_{r}"
    sets = [f"model={start_model}", f"task={cfg.task}", f"train_file={train_file}", f"output_dir={run_dir}",
            f"max_steps={cfg.solver_steps}", f"seed={cfg.seed * 1000 + r}", f"progress={str(cfg.progress).lower()}"]
    solver_cfg = load_config(cfg.solver_config, sets)
    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if ckpt is not None and json.loads((ckpt / "meta.json").read_text())["step"] >= cfg.solver_steps:
        return ckpt / "policy"
    if ckpt is None and run_dir.exists():  # stopped before its first save: nothing to resume
        shutil.rmtree(run_dir)
    train(solver_cfg, resume=ckpt is not None)
    final = latest_checkpoint(run_dir)
    if final is None or not list_checkpoints(run_dir):
        raise SelfRLError(f"{run_dir}: the solver's run left no checkpoint")
    return final / "policy"


# ------------------------------------------------------------------------------------------------------ the loop
def run_rounds(cfg) -> dict:
    """The alternating loop (module docstring); returns the final report."""
    from selfrl import synth
    from selfrl.models import load_model, resolve_device
    from selfrl.synth_filters import ContaminationIndex
    from selfrl.tasks import render_prompt, use_chat_template

    out = Path(cfg.output_dir)
    if (out / "report.json").exists():
        raise SelfRLError(f"{out} already holds a finished synthesis; choose another output_dir")
    _check_same_config(out, cfg)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    solver, tokenizer, task, seeds, evals = synth._load(cfg)
    device = resolve_device(cfg.device)
    chat = use_chat_template(tokenizer, cfg.apply_chat_template, cfg.model)
    index = ContaminationIndex(evals, cfg.contamination_ngram)
    start = resolve_organism(cfg.model, cfg.progress)
    proposer_dir, solver_dir = start, start
    proposer_log = out / "proposer.jsonl"
    for r in tqdm(range(1, cfg.rounds + 1), desc="rounds", disable=not cfg.progress):
        kept_so_far = [q["prompt"] for q in _read_jsonl(out / "questions.jsonl")]
        judged_against = seeds + kept_so_far  # a question of an earlier round is a duplicate: reward 0

        def judge_fn(texts, shown, c):
            torch.manual_seed(c.seed + 1)  # the vote's samples: replayed exactly on resume
            return synth.judge(texts, shown, c, judged_against, index, solver, tokenizer, task)

        # 1. the proposer: GRPO against the current solver
        if cfg.proposer_training:
            pdir = out / "proposer" / f"round_{r}"
            if not (pdir / "meta.json").is_file():
                proposer, _ = load_model(str(proposer_dir), device, cfg.dtype)
                optimizer = torch.optim.AdamW(proposer.parameters(), lr=cfg.proposer_learning_rate, weight_decay=0.0)
                if (Path(proposer_dir) / "optimizer.pt").is_file():
                    optimizer.load_state_dict(torch.load(Path(proposer_dir) / "optimizer.pt"))
                lines = [m for m in _read_jsonl(proposer_log) if m["round"] < r]  # an interrupted round restarts
                for i in tqdm(range(1, cfg.proposer_steps + 1), desc=f"proposer round {r}", disable=not cfg.progress):
                    step = (r - 1) * cfg.proposer_steps + i
                    pcfg = dataclasses.replace(cfg, num_prompts=cfg.proposer_prompts_per_step,
                                               seed=cfg.seed * 1_000_003 + step, step=step)
                    prompts = synth.synthesis_prompts(pcfg, seeds)
                    torch.manual_seed(pcfg.seed)
                    _, m = proposer_step(proposer, optimizer, tokenizer,
                                         [render_prompt(tokenizer, t, chat) for t, _ in prompts],
                                         [s for _, s in prompts], pcfg,
                                         lambda texts, shown: judge_fn(texts, shown, pcfg))
                    lines.append({"round": r, "step": step, **m})
                    _write_jsonl(proposer_log, lines)
                _save_model(proposer, tokenizer, optimizer, pdir, {"round": r, "steps": cfg.proposer_steps * r})
                del proposer, optimizer
            proposer_dir = str(pdir)
        # 2. the round's questions, written by the (trained or fixed) proposer, judged by the current solver
        rdir = out / "rounds" / f"round_{r}"
        if not (rdir / "report.json").is_file():
            writer = solver if proposer_dir == solver_dir else load_model(str(proposer_dir), device, cfg.dtype)[0]
            writer.eval()
            wcfg = dataclasses.replace(cfg, seed=cfg.seed * 1_000_003 + 999_983 * r, step=r)
            prompts = synth.synthesis_prompts(wcfg, seeds)
            torch.manual_seed(wcfg.seed)
            texts = synth.sample_texts(writer, tokenizer, [render_prompt(tokenizer, t, chat) for t, _ in prompts],
                                       cfg.num_generations, cfg.max_completion_length, cfg.temperature, cfg.batch_size,
                                       cfg.progress, desc=f"writing round {r}")
            rows = judge_fn(texts, [s for _, s in prompts], wcfg)
            report = synth.build_report(wcfg, rows)
            rdir.mkdir(parents=True, exist_ok=True)
            _write_jsonl(rdir / "candidates.jsonl", rows)
            _write_jsonl(rdir / "questions.jsonl", synth.kept_lines(rows))
            (rdir / "report.json").write_text(json.dumps(report, indent=2))
            del writer
        # every round's kept questions, rebuilt from the round files (idempotent on resume)
        everything = [q for i in range(1, r + 1) for q in _read_jsonl(out / "rounds" / f"round_{i}" / "questions.jsonl")]
        if len(everything) < 1:
            raise SelfRLError(f"round {r}: no written question has passed the filters yet; see {rdir / 'report.json'}")
        _write_jsonl(out / "questions.jsonl", everything)
        # 3. the solver: label-free training on every question kept so far
        solver_dir = str(solver_round(cfg, out, r, solver_dir, out / "questions.jsonl"))
        solver, _ = load_model(solver_dir, device, cfg.dtype)
        solver.eval()
    return _finish(cfg, out)


def _finish(cfg, out: Path) -> dict:
    """Counts over every round's writing pass, each round's figures; report.json written last."""
    from selfrl import synth
    from selfrl.checkpoint import write_json_atomic

    rounds, counts = [], {}
    steps = _read_jsonl(out / "proposer.jsonl")
    for r in range(1, cfg.rounds + 1):
        rep = json.loads((out / "rounds" / f"round_{r}" / "report.json").read_text())
        for k, v in rep["counts"].items():
            counts[k] = counts.get(k, 0) + v
        mine = [m["proposer/reward"] for m in steps if m["round"] == r]
        rounds.append({"round": r, "counts": rep["counts"], "mean_proposer_reward": rep["mean_proposer_reward"],
                       "proposer_steps_reward_first_last": [mine[0], mine[-1]] if mine else None})
    report = {"counts": counts, "rounds": rounds, "proposer_training": cfg.proposer_training,
              "config": dataclasses.asdict(cfg)}
    lines = [f"# Proposer loop: {cfg.rounds} rounds, proposer {'trained' if cfg.proposer_training else 'fixed'}", "",
             "| round | written | kept | mean proposer reward (writing pass) | proposer GRPO reward, first → last step |",
             "| ---: | ---: | ---: | ---: | --- |"]
    for x in rounds:
        fl = x["proposer_steps_reward_first_last"]
        lines.append(f"| {x['round']} | {x['counts']['generated']} | {x['counts']['kept']} | "
                     f"{x['mean_proposer_reward']:.3f} | {'n/a' if fl is None else f'{fl[0]:.3f} → {fl[1]:.3f}'} |")
    (out / "report.md").write_text("\n".join(lines) + "\n\n" + synth.report_markdown({**report, **_totals(rounds)}))
    write_json_atomic(out / "report.json", report)
    return report


def _totals(rounds: list[dict]) -> dict:
    return {"mean_majority_share_voted": None, "kept_examples": [], "examples": {},
            "mean_proposer_reward": sum(x["mean_proposer_reward"] for x in rounds) / len(rounds)}
