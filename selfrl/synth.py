"""`selfrl synth CONFIG`: the model writes new training questions, filtered, as a JSONL that `train_file` reads.

What is kept from MM-UPT (arXiv 2505.22453, methods.md §4): two ways of writing questions, then the same label-free
majority-vote GRPO on them.
  * in-context synthesis (`mode: in_context`): each prompt shows `num_shots` questions drawn from the training set and
    asks for a new one. The paper shows (question, answer) examples; here the examples are QUESTIONS ONLY, read
    through the task's `train_prompts()`: a label-free pipeline never reads a gold answer (train_answers is not called);
  * direct synthesis (`mode: direct`): the prompt is an instruction (or a context written into it) and nothing else.
Each prompt is sampled `num_generations` times at `temperature`; every completion is parsed and filtered
(selfrl/synth_filters.py: empty/unparseable, length, exact and near duplicates among themselves and against the
training questions, contamination with the validation and test questions, answerability by the model's own vote).

What is added from R-Zero (methods.md §9): the answerability filter keeps questions whose majority share under the
model's own `num_votes` answers lies in a band [min_majority_share, max_majority_share] around ½ (a unanimous question
gives GRPO no advantage; a question without agreement gives a noisy pseudo-label), and every candidate is scored with
the proposer's uncertainty reward (synth_filters.proposer_rewards), recorded in candidates.jsonl. With `solver_config`
set, `selfrl synth` runs selfrl/proposer_rl.py instead: rounds of writing that alternate with the solver's label-free
training, the writer itself trained by GRPO on that reward when `proposer_training` is true.

Outputs, in `output_dir` (an existing one is never overwritten):
    questions.jsonl    the kept questions: {"prompt", "mode", "seeds", "step", "prompt_index", "majority_share"};
                       `selfrl train --set train_file=.../questions.jsonl` trains on it (no "answer" field: there is
                       no gold answer, and the vote's answer is not one)
    candidates.jsonl   every completion with its parsed question, the reason it was dropped (null: kept), its majority
                       share and proposer reward
    report.json, report.md   the count per filter, the settings, examples of each drop

Launch: `selfrl synth CONFIG [--set key=value ...]`; 1 CPU: `model: organism2-writer`, task sums (the organism
taught to write questions; templates "{examples};" with separator ";", and "#": selfrl/lab/configs/synth_study.yaml)
in about 20 s (1,536 questions written, 8 votes each, 1 thread); 1 GPU: any HF chat model (`device: auto`), prompts
rendered through its chat template. Sampling is selfrl/rollout.generate (each prompt's KV cache shared by its
samples), batched.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from selfrl import core
from selfrl.errors import ConfigError, SelfRLError
from selfrl.synth_filters import ContaminationIndex, band_reason, parse_question, proposer_rewards, text_filters

log = logging.getLogger("selfrl")

MODES = ("in_context", "direct")
REASONS = ("empty", "unparseable", "too_short", "too_long", "duplicate_of_seed", "duplicate", "near_duplicate_of_seed",
           "near_duplicate", "contaminated_val", "contaminated_test", "no_answer", "below_band", "above_band")


@dataclass
class SynthConfig:
    # --- model and data ----------------------------------------------------------------------------------------
    model: str = "organism"
    """Local path or hub id of an AutoModelForCausalLM, or "organism" for the built-in CPU model organism."""
    task: str = "arith"
    """Built-in task name or a task file "path/to/file.py:ClassName": its questions are the seeds, its extract_answer votes."""
    # model also takes "organism2" (sums), "organism:TASK", and "organism2-writer": organism2 whose warm-up also
    # taught it to write sums questions (selfrl/organism.py writer_organism_path; docs/synth.md)
    train_file: str | None = None
    """Seed questions replacing the task's own training questions (a .jsonl/.parquet/.csv file or a hub id, as in train)."""
    prompt_column: str = "prompt"
    """Column of train_file holding the question text."""
    apply_chat_template: bool | None = None
    """Render every prompt as a user turn of the tokenizer's chat template (None: when it has one; true: required)."""
    output_dir: str = "runs/synth"
    """Directory for questions.jsonl, candidates.jsonl and the report; must not hold a synthesis already."""
    seed: int = 0
    """Seeds which training questions each prompt shows and the sampling."""
    step: int = 0
    """Round of synthesis recorded on every line (a loop alternating proposer and solver training sets it)."""

    # --- writing questions (MM-UPT, methods.md §4) ---------------------------------------------------------------
    mode: str = "in_context"
    """in_context (shown num_shots training questions, never their answers) or direct (shown only direct_template)."""
    num_shots: int = 4
    """k: training questions shown in each in-context prompt."""
    num_prompts: int = 64
    """Synthesis prompts (each in-context one with its own random k questions)."""
    num_generations: int = 4
    """Questions sampled per synthesis prompt; num_prompts x num_generations candidates in all."""
    temperature: float = 1.0
    """Sampling temperature of the question writer."""
    max_completion_length: int = 128
    """Most tokens of one written question."""
    batch_size: int = 16
    """Prompts per generation call (each with all its samples)."""
    in_context_template: str = ("Here are some example questions:\n{examples}\n\n"
                                "Write one new question of the same kind. Reply with the question only.")
    """In-context prompt; {examples} becomes the shown questions joined by example_separator."""
    example_separator: str = "\n"
    """Text between two shown questions."""
    direct_template: str = "Write one new question that has a single short answer. Reply with the question only."
    """Direct prompt: an instruction, optionally with a context written into it."""
    question_pattern: str | None = None
    """Regex whose first match (its group "q" if named) is the question; a completion without one is unparseable (None: the first non-empty line)."""

    # --- filters (selfrl/synth_filters.py) ---------------------------------------------------------------------
    min_question_length: int = 1
    """Shortest question kept, in characters."""
    max_question_length: int = 1000
    """Longest question kept, in characters."""
    near_duplicate_ngram: int = 5
    """Character n-gram size of the near-duplicate test (Lee et al. 2022: 5)."""
    near_duplicate_threshold: float = 0.8
    """Jaccard at or above which a question is a near duplicate of a seed or an earlier kept question (Lee et al. 2022: 0.8)."""
    contamination_ngram: int = 13
    """Word n-gram size of the contamination test against the evaluation questions (GPT-3: 13); shorter questions match whole."""
    contamination_splits: str = "val,test"
    """Comma list of the task's labelled splits whose questions no synthesized question may overlap."""
    num_votes: int = 8
    """Answers the model samples per kept question for the answerability vote."""
    vote_temperature: float = 1.0
    """Sampling temperature of the vote."""
    vote_max_completion_length: int = 256
    """Most tokens of one voting answer."""
    min_majority_share: float = 0.3
    """Lowest majority share kept: below it the pseudo-label is mostly noise (R-Zero's band around 1/2)."""
    max_majority_share: float = 0.7
    """Highest majority share kept: near 1 every answer agrees and GRPO gets no advantage (R-Zero's band around 1/2)."""

    # --- the learning proposer (selfrl/proposer_rl.py; R-Zero, methods.md §9) ------------------------------------
    solver_config: str | None = None
    """A `selfrl train` YAML for the solver: when set, writing alternates with the solver's training for `rounds` rounds (its model, task, train_file, output_dir, max_steps and seed are set per round)."""
    proposer_training: bool = False
    """Train the question writer with GRPO on R-Zero's uncertainty reward before each round's writing (needs solver_config); false: a fixed writer."""
    rounds: int = 3
    """Rounds of (proposer GRPO, writing num_prompts x num_generations questions, solver training)."""
    solver_steps: int = 100
    """Solver training steps per round."""
    proposer_steps: int = 10
    """Proposer GRPO steps per round."""
    proposer_prompts_per_step: int = 4
    """Writing prompts per proposer GRPO step, each sampled num_generations times (one GRPO group)."""
    proposer_learning_rate: float = 1e-4
    """AdamW learning rate of the proposer (constant, no KL)."""

    # --- hardware ------------------------------------------------------------------------------------------------
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    dtype: str = "float32"
    """float32 or bfloat16."""
    torch_threads: int | None = None
    """CPU threads for torch (None: torch's default)."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> "SynthConfig":
        """Raise ConfigError naming the first invalid field."""
        checks = [  # (field, holds, what it must be)
            ("mode", self.mode in MODES, f"one of {', '.join(MODES)}"),
            ("num_shots", self.num_shots >= 1, ">= 1"),
            ("num_prompts", self.num_prompts >= 1, ">= 1"),
            ("num_generations", self.num_generations >= 1, ">= 1"),
            ("temperature", self.temperature > 0, "> 0"),
            ("max_completion_length", self.max_completion_length >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("in_context_template", self.mode != "in_context" or "{examples}" in self.in_context_template,
             "a text holding {examples}"),
            ("direct_template", self.mode != "direct" or bool(self.direct_template.strip()), "a non-empty text"),
            ("min_question_length", self.min_question_length >= 1, ">= 1"),
            ("max_question_length", self.max_question_length >= self.min_question_length, ">= min_question_length"),
            ("near_duplicate_ngram", self.near_duplicate_ngram >= 1, ">= 1"),
            ("near_duplicate_threshold", 0 < self.near_duplicate_threshold <= 1, "in (0, 1]"),
            ("contamination_ngram", self.contamination_ngram >= 1, ">= 1"),
            ("num_votes", self.num_votes >= 1, ">= 1"),
            ("vote_temperature", self.vote_temperature > 0, "> 0"),
            ("vote_max_completion_length", self.vote_max_completion_length >= 1, ">= 1"),
            ("min_majority_share", 0 <= self.min_majority_share <= 1, "in [0, 1]"),
            ("max_majority_share", self.min_majority_share <= self.max_majority_share <= 1,
             "in [min_majority_share, 1]"),
            ("device", self.device in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
            ("dtype", self.dtype in ("float32", "bfloat16"), "float32 or bfloat16"),
            ("torch_threads", self.torch_threads is None or self.torch_threads >= 1, ">= 1 or null"),
            ("proposer_training", not self.proposer_training or self.solver_config is not None,
             "false unless solver_config names the solver's train YAML (the proposer is rewarded by a solver's votes)"),
            ("rounds", self.rounds >= 1, ">= 1"),
            ("solver_steps", self.solver_steps >= 1, ">= 1"),
            ("proposer_steps", self.proposer_steps >= 1, ">= 1"),
            ("proposer_prompts_per_step", self.proposer_prompts_per_step >= 1, ">= 1"),
            ("proposer_learning_rate", self.proposer_learning_rate > 0, "> 0"),
            ("num_generations", not self.proposer_training or self.num_generations >= 2,
             ">= 2 with proposer_training (a GRPO group of one has no advantage)"),
        ]
        for name, ok, must in checks:
            if not ok:
                raise ConfigError(f"{name}: must be {must}, got {getattr(self, name)!r}")
        if self.question_pattern is not None:
            try:
                re.compile(self.question_pattern)
            except re.error as e:
                raise ConfigError(f"question_pattern: not a valid regex ({e})") from None
        if not self.splits():
            raise ConfigError("contamination_splits: name at least one labelled split (e.g. val,test)")
        if self.solver_config is not None and not Path(self.solver_config).is_file():
            raise ConfigError(f"solver_config: no such file {self.solver_config!r} (a selfrl train YAML)")
        return self

    def splits(self) -> list[str]:
        return [s.strip() for s in self.contamination_splits.split(",") if s.strip()]


def load_synth_config(path: str | Path | None = None, sets: list[str] | None = None) -> SynthConfig:
    """Defaults <- YAML file <- --set pairs, then validated (the generic loader, selfrl/config.py)."""
    from selfrl import config

    return config.load(SynthConfig, path, sets)


# ------------------------------------------------------------------------------------------------------ sampling
def synthesis_prompts(cfg: SynthConfig, seeds: list[str]) -> list[tuple[str, list[str]]]:
    """(prompt text before any chat template, the seed questions it shows) for each of cfg.num_prompts prompts."""
    rng = random.Random(cfg.seed)
    if cfg.mode == "direct":
        return [(cfg.direct_template, []) for _ in range(cfg.num_prompts)]
    if len(seeds) < cfg.num_shots:
        raise SelfRLError(f"num_shots: {cfg.num_shots} questions per prompt, but only {len(seeds)} seed questions")
    out = []
    for _ in range(cfg.num_prompts):
        shown = rng.sample(seeds, cfg.num_shots)
        out.append((cfg.in_context_template.replace("{examples}", cfg.example_separator.join(shown)), shown))
    return out


@torch.no_grad()
def sample_texts(model, tokenizer, prompts: list[str], num_samples: int, max_new_tokens: int, temperature: float,
                 batch_size: int, progress: bool = True, desc: str = "sampling") -> list[str]:
    """num_samples completions of each (already rendered) prompt, prompt-major, batch_size prompts per call."""
    from selfrl.rollout import encode_prompts, generate

    device = next(model.parameters()).device
    texts: list[str] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress):
        batch = encode_prompts(tokenizer, prompts[i : i + batch_size], device)
        texts += generate(model, tokenizer, batch, num_samples, max_new_tokens, temperature).texts
    return texts


def vote(model, tokenizer, task, questions: list[str], cfg: SynthConfig) -> list[tuple[str | None, float]]:
    """(majority answer, majority share) of the model's own num_votes answers to each question (core.majority_vote,
    the task's extract_answer and is_equivalent): label-free."""
    prompts = [task.format_prompt(q) for q in questions]
    texts = sample_texts(model, tokenizer, prompts, cfg.num_votes, cfg.vote_max_completion_length, cfg.vote_temperature,
                         cfg.batch_size, cfg.progress, desc="answerability votes")
    k = cfg.num_votes
    return [core.majority_vote([task.extract_answer(t) for t in texts[i * k : (i + 1) * k]], task.is_equivalent)
            for i in range(len(questions))]


# ------------------------------------------------------------------------------------------------------ the run
def _load(cfg: SynthConfig):
    """(model, tokenizer, chat-wrapped task, seed questions, evaluation questions by split)."""
    from selfrl.data import read_prompts
    from selfrl.errors import TaskError
    from selfrl.models import load_model, resolve_device
    from selfrl.organism import resolve_organism
    from selfrl.tasks import load_task, with_chat_template

    task = load_task(cfg.task)
    seeds = read_prompts(cfg.train_file, cfg.prompt_column)[0] if cfg.train_file else task.train_prompts()
    evals = {}
    for split in cfg.splits():
        try:
            evals[split] = [q for q, _ in task.eval_examples(split)]  # questions only: answers are never read
        except TaskError as e:
            raise ConfigError(f"contamination_splits: {e}") from None
    model, tokenizer = load_model(resolve_organism(cfg.model, cfg.progress), resolve_device(cfg.device), cfg.dtype)
    model.eval()
    return model, tokenizer, with_chat_template(task, tokenizer, cfg.apply_chat_template, cfg.model), seeds, evals


def run_synth(cfg: SynthConfig) -> dict:
    """Write questions, filter them, write the outputs (module docstring); returns the report. With solver_config
    set: the rounds of selfrl/proposer_rl.py."""
    from selfrl.tasks import render_prompt, use_chat_template

    if cfg.solver_config is not None:
        from selfrl.proposer_rl import run_rounds

        return run_rounds(cfg)

    out = Path(cfg.output_dir)
    if (out / "report.json").exists() or (out / "questions.jsonl").exists():
        raise SelfRLError(f"{out} already holds a synthesis; choose another output_dir")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    model, tokenizer, task, seeds, evals = _load(cfg)
    chat = use_chat_template(tokenizer, cfg.apply_chat_template, cfg.model)
    prompts = synthesis_prompts(cfg, seeds)
    rendered = [render_prompt(tokenizer, text, chat) for text, _ in prompts]
    unk = tokenizer.unk_token_id
    if unk is not None and unk in tokenizer(rendered[0], add_special_tokens=False)["input_ids"]:
        log.warning("the synthesis prompt holds characters the tokenizer does not know (<unk>); see docs/synth.md")
    completions = sample_texts(model, tokenizer, rendered, cfg.num_generations, cfg.max_completion_length,
                               cfg.temperature, cfg.batch_size, cfg.progress, desc=f"writing questions ({cfg.mode})")
    index = ContaminationIndex(evals, cfg.contamination_ngram)
    rows = judge(completions, [shown for _, shown in prompts], cfg, seeds, index, model, tokenizer, task)
    report = build_report(cfg, rows)
    _write(out, cfg, rows, report)
    if not report["counts"]["kept"]:
        raise SelfRLError(f"no synthesized question passed the filters; see {out / 'report.md'}")
    return report


def judge(completions: list[str], shown: list[list[str]], cfg: SynthConfig, seeds: list[str],
          index: ContaminationIndex, model, tokenizer, task) -> list[dict]:
    """One row per completion (prompt-major, cfg.num_generations per prompt; shown[i]: the seeds prompt i showed):
    its parsed question, the first filter it failed ("reason", None: kept), the model's majority share (None: not
    voted) and the proposer's reward. A loop that trains the question writer with GRPO calls this on each group of
    written questions and reads "proposer_reward"; duplicates are judged within the call and against `seeds`."""
    rows = []
    for j, text in enumerate(completions):
        q, why = parse_question(text, cfg.question_pattern)
        i = j // cfg.num_generations
        rows.append({"completion": text, "question": q, "reason": why, "mode": cfg.mode, "seeds": shown[i],
                     "step": cfg.step, "prompt_index": i, "majority_share": None})
    reasons = text_filters([r["question"] for r in rows], seeds, index, cfg.min_question_length,
                           cfg.max_question_length, cfg.near_duplicate_ngram, cfg.near_duplicate_threshold)
    for r, why in zip(rows, reasons):
        r["reason"] = r["reason"] or why
    passed = [r for r in rows if r["reason"] is None]
    for r, (answer, share) in zip(passed, vote(model, tokenizer, task, [r["question"] for r in passed], cfg)):
        r["majority_share"] = share
        r["reason"] = band_reason(answer, share, cfg.min_majority_share, cfg.max_majority_share)
    voted = [r["majority_share"] is not None for r in rows]  # passed every filter before the vote
    for r, reward in zip(rows, proposer_rewards([r["majority_share"] for r in rows], voted)):
        r["proposer_reward"] = reward
    return rows


def build_report(cfg: SynthConfig, rows: list[dict]) -> dict:
    """Counts per filter (every candidate counted once, under the first filter it failed), kept share and rewards."""
    counts = {"generated": len(rows)}
    counts.update({reason: sum(r["reason"] == reason for r in rows) for reason in REASONS})
    kept = [r for r in rows if r["reason"] is None]
    counts["kept"] = len(kept)
    voted = [r["majority_share"] for r in rows if r["majority_share"] is not None]
    examples = {reason: [r["question"] if r["question"] is not None else r["completion"] for r in rows
                         if r["reason"] == reason][:3] for reason in REASONS}
    return {
        "counts": counts,
        "kept_fraction": len(kept) / max(len(rows), 1),
        "mean_majority_share_voted": sum(voted) / len(voted) if voted else None,
        "mean_proposer_reward": sum(r["proposer_reward"] for r in rows) / max(len(rows), 1),
        "examples": {k: v for k, v in examples.items() if v},
        "kept_examples": [r["question"] for r in kept[:5]],
        "config": dataclasses.asdict(cfg),
    }


def report_markdown(report: dict) -> str:
    cfg, counts = report["config"], report["counts"]
    lines = [f"# Synthesized questions: {cfg['mode']}, model {cfg['model']}, task {cfg['task']}", "",
             f"{cfg['num_prompts']} prompts x {cfg['num_generations']} samples at temperature {cfg['temperature']}; "
             f"vote: {cfg['num_votes']} answers, band [{cfg['min_majority_share']}, {cfg['max_majority_share']}].", "",
             "| filter | dropped |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in counts.items() if k not in ("generated", "kept")]
    lines += [f"| **kept** | **{counts['kept']} of {counts['generated']}** |", ""]
    share = report["mean_majority_share_voted"]
    lines.append(f"Mean majority share of the voted questions: {'n/a' if share is None else f'{share:.3f}'}; "
                 f"mean proposer reward (R-Zero, 0 for a filtered question): {report['mean_proposer_reward']:.3f}.")
    if report["kept_examples"]:
        lines += ["", "Kept, first ones:", ""] + [f"- `{q}`" for q in report["kept_examples"]]
    if report["examples"]:
        lines += ["", "Dropped, examples per filter:", ""]
        for reason, texts in report["examples"].items():  # JSON-escaped: a completion may hold newlines or backticks
            lines.append(f"- {reason}: " + ", ".join(f"`{json.dumps(t)[1:-1][:80]}`" for t in texts))
    return "\n".join(lines) + "\n"


def kept_lines(rows: list[dict]) -> list[dict]:
    """questions.jsonl's lines: each kept question as a train_file prompt with its provenance."""
    keys = ("mode", "seeds", "step", "prompt_index", "majority_share")
    return [{"prompt": r["question"], **{k: r[k] for k in keys}} for r in rows if r["reason"] is None]


def _write(out: Path, cfg: SynthConfig, rows: list[dict], report: dict) -> None:
    from selfrl.checkpoint import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    (out / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = kept_lines(rows)
    if kept:  # train_file refuses an empty file, so none is written when nothing passed
        tmp = out / "questions.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(out / "questions.jsonl")
    (out / "report.md").write_text(report_markdown(report))
    write_json_atomic(out / "report.json", report)  # last: its presence marks a finished synthesis
