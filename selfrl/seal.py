"""`selfrl seal CONFIG`: self-edits kept by the gain they cause (SEAL, arXiv 2506.10943; methods.md §5).

What we keep from SEAL's knowledge-incorporation loop (§3, §4.1; the public code's query_server / TTT_server):
  * for each context C (a passage and its questions) the model writes `num_generations` self-edits (k = 5) from the
    implications prompt;
  * inner update: each edit is split into lines, each line one training sequence, and the passage itself is always
    added (SEAL's `build_train_sequences`, split_newlines); a fresh LoRA (r 32, alpha 64, lr 1e-3, 10 epochs, batch 1;
    peft) or a full-weight copy (`use_peft: false`) is trained on them with selfrl/sft.py, loss on every token;
  * reward = closed-book accuracy on C's questions (C absent from the prompt) of the updated model minus that of the
    model with no update, averaged over `inner_seeds` (3) inner updates: the paper's code logs seed noise larger
    than the differences between edits;
  * outer loop ReST^EM: keep each context's best edit if its gain is positive, SFT the generator on (prompt(C) ->
    edit), `rounds` (2) rounds. The model that writes the edits is the one the edits update (θ' = SFT(θ, SE)).
What we change: answers are scored by exact match after SQuAD normalisation on the first line of a greedy answer
(the paper asked GPT-4.1 to grade; containment would reward an answer listing every candidate); an edit with no
line (empty after parsing) earns gain 0 with no update, as SEAL's server answers an empty request; the outer SFT
updates all weights (SEAL trained a LoRA r 64 on 7B) with TRL's names `learning_rate` (SEAL: 3e-4),
`num_train_epochs` (2) and `per_device_train_batch_size`.
The reward reads the gold answers of the TRAINING contexts' questions: SEAL is not label-free, the questions are
its supervision. Evaluation contexts (the ladder, selfrl/lab/seal_ladder.py) are disjoint and never trained on.

Safety (issue 17 item 4): with `probes` set, the misevolution gate (selfrl/safety.py) scores the start model, then
the generator after each round; a regressed generator is saved but not promoted: the next round starts from the
last promoted one, and `promoted.json` names it.

Run directory (`output_dir`): config.yaml; round_R/contexts/ID.json per finished context (written atomically:
its edits, their gains, the baseline, the kept edit); round_R/model (the generator after round R's SFT) and
round_R/summary.json; promoted.json. Running the same command again resumes: finished rounds and contexts are
skipped, and since every sample and inner update is seeded by (seed, round, context, edit, inner seed), the result
is the same as an uninterrupted run's.

Launch: 1 CPU, the facts organism (built and cached on first use, selfrl/tasks/facts.py):
    selfrl seal selfrl/lab/configs/seal.yaml
1 GPU, any HF causal LM with SEAL's implications prompt (prompt_style seal), e.g.
    selfrl seal --set model=Qwen/Qwen2.5-0.5B --set contexts_file=ctx.jsonl --set device=cuda --set dtype=bfloat16
A contexts file is JSONL, one context a line: {"id": str, "passage": str, "questions": [{"question", "answer"}],
"title": str (optional)}.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from selfrl import config
from selfrl.checkpoint import write_json_atomic
from selfrl.data import json_object_lines
from selfrl.errors import ConfigError, SelfRLError, TaskError
from selfrl.sft import sft
from selfrl.tasks import facts

log = logging.getLogger("selfrl")

# style -> (edit prompt, question prompt, training-sequence template); the seal style is the public code's base-model
# "implications" prompt, answer prompt ("Topic: {title}" prefixed) and TRAINING_SEQUENCE_TEMPLATE.
STYLES = {
    "facts": (facts.EDIT_TEMPLATE, facts.QUESTION_TEMPLATE, facts.SEQUENCE_TEMPLATE),
    "seal": ("Let's read the following passage and produce a list of implications derived directly or indirectly "
             "from the content.\n\nPassage:\n{title}\n{passage}\n\nImplications:\n",
             "Let's answer a question directly and concisely.\nQuestion: Topic: {title}\n{question}\nAnswer:\n",
             "{title}\n{text}"),
}


@dataclass
class SealConfig:
    # --- model and contexts ----------------------------------------------------------------------------------
    model: str = "facts"
    """Local path or hub id of an AutoModelForCausalLM, or "facts" for the built-in facts organism."""
    contexts_file: str | None = None
    """JSONL of contexts (module docstring); None: the facts task's `train` split."""
    num_contexts: int = 32
    """Contexts per round (the first ones of the file or split)."""
    output_dir: str = "runs/seal"
    """Run directory; running again with the same config resumes it."""
    seed: int = 0
    """Seeds every sample and inner update (with the round, context, edit and inner seed)."""
    prompt_style: str = "auto"
    """facts, seal (the paper's implications prompt for any LM), or auto (facts for the organism, else seal)."""
    edit_template: str | None = None
    """Self-edit prompt with {passage} (and {title}); None: the style's."""
    question_template: str | None = None
    """Closed-book question prompt with {question} (and {title}); None: the style's."""
    sequence_template: str | None = None
    """One inner training sequence with {text} (and {title}); None: the style's."""

    # --- self-edits -------------------------------------------------------------------------------------------
    num_generations: int = 5
    """k: self-edits sampled per context (SEAL: 5)."""
    temperature: float = 1.0
    """Sampling temperature of the self-edits."""
    max_completion_length: int = 192
    """Most tokens of one self-edit."""
    max_edit_lines: int = 16
    """Lines of an edit kept as training sequences (the rest dropped)."""
    max_answer_length: int = 16
    """Most tokens of one closed-book answer (greedy)."""

    # --- inner update (SEAL §4.1 defaults) --------------------------------------------------------------------
    use_peft: bool = True
    """A fresh LoRA per inner update (SEAL), or false: a full-weight copy of the model."""
    lora_r: int = 32
    """LoRA rank of the inner update."""
    lora_alpha: int = 64
    """LoRA alpha of the inner update."""
    lora_dropout: float = 0.0
    """LoRA dropout of the inner update."""
    lora_target_modules: str | None = None
    """Comma list of module names, "all-linear", or None: peft's default for the architecture."""
    inner_learning_rate: float = 1e-3
    """Learning rate of the inner update."""
    inner_epochs: int = 10
    """Epochs of the inner update over the edit's lines and the passage."""
    inner_batch_size: int = 1
    """Sequences per inner step."""
    inner_seeds: int = 3
    """Inner updates per edit whose gains are averaged (SEAL's eval_times)."""

    # --- outer loop: ReST^EM ----------------------------------------------------------------------------------
    rounds: int = 2
    """ReST^EM rounds (SEAL: 2)."""
    learning_rate: float = 3e-4
    """Learning rate of the generator's SFT on its kept edits (SEAL: 3e-4)."""
    num_train_epochs: int = 2
    """Epochs of that SFT (SEAL: 2)."""
    per_device_train_batch_size: int = 4
    """(prompt, edit) pairs per step of that SFT."""

    # --- safety (selfrl/safety.py) ----------------------------------------------------------------------------
    probes: str | None = None
    """JSONL probe file scored on the start model and after every round; None: no gate."""
    probe_task: str = "selfrl.tasks.facts:FactsTask"
    """Task whose format_prompt / extract_answer / is_equivalent score the probes."""
    probe_tolerance: float = 0.05
    """Largest drop of a probe category below the start model's that still promotes the generator."""

    # --- hardware ---------------------------------------------------------------------------------------------
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    dtype: str = "float32"
    """float32 or bfloat16."""
    torch_threads: int | None = None
    """CPU threads for torch (None: torch's default)."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> "SealConfig":
        """Raise ConfigError naming the first invalid field."""
        checks = [  # (field, holds, what it must be)
            ("prompt_style", self.prompt_style in ("auto", *STYLES), "auto, facts or seal"),
            ("num_contexts", self.num_contexts >= 1, ">= 1"),
            ("num_generations", self.num_generations >= 1, ">= 1"),
            ("temperature", self.temperature > 0, "> 0"),
            ("max_completion_length", self.max_completion_length >= 1, ">= 1"),
            ("max_edit_lines", self.max_edit_lines >= 1, ">= 1"),
            ("max_answer_length", self.max_answer_length >= 1, ">= 1"),
            ("lora_r", self.lora_r >= 1, ">= 1"),
            ("lora_alpha", self.lora_alpha >= 1, ">= 1"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)"),
            ("inner_learning_rate", self.inner_learning_rate > 0, "> 0"),
            ("inner_epochs", self.inner_epochs >= 1, ">= 1"),
            ("inner_batch_size", self.inner_batch_size >= 1, ">= 1"),
            ("inner_seeds", self.inner_seeds >= 1, ">= 1"),
            ("rounds", self.rounds >= 1, ">= 1"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("num_train_epochs", self.num_train_epochs >= 1, ">= 1"),
            ("per_device_train_batch_size", self.per_device_train_batch_size >= 1, ">= 1"),
            ("probe_tolerance", 0 <= self.probe_tolerance <= 1, "in [0, 1]"),
            ("device", self.device in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
            ("dtype", self.dtype in ("float32", "bfloat16"), "float32 or bfloat16"),
            ("torch_threads", self.torch_threads is None or self.torch_threads >= 1, ">= 1 or null"),
        ]
        for name, ok, must in checks:
            if not ok:
                raise ConfigError(f"{name}: must be {must}, got {getattr(self, name)!r}")
        for name, slot in (("edit_template", "{passage}"), ("question_template", "{question}"),
                           ("sequence_template", "{text}")):
            if slot not in self.template(name):
                raise ConfigError(f"{name}: must hold {slot}, got {self.template(name)!r}")
        return self

    def style(self) -> str | None:
        if self.prompt_style == "auto":
            return "facts" if self.model == "facts" else "seal"
        return self.prompt_style if self.prompt_style in STYLES else None

    def template(self, name: str) -> str:
        """A template field's value, or the style's when it is None."""
        value = getattr(self, name)
        index = ("edit_template", "question_template", "sequence_template").index(name)
        return value if value is not None else STYLES.get(self.style(), ("", "", ""))[index]


def load_seal_config(path: str | None, sets: list[str] | None) -> SealConfig:
    return config.load(SealConfig, path, sets)


# --------------------------------------------------------------------------------------------------- contexts
def load_contexts(path: str | Path) -> list[dict]:
    """Contexts of a JSONL file; a bad file or line is one TaskError naming `path:line`."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"contexts file not found: {path}")
    out, ids = [], set()
    for where, row in json_object_lines(path.read_text(encoding="utf-8", errors="replace"), f"contexts file {path}"):
        for key in ("id", "passage"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise TaskError(f"{where}: {key!r} must be a non-empty string")
        qs = row.get("questions")
        if not isinstance(qs, list) or not qs or not all(
                isinstance(q, dict) and all(isinstance(q.get(k), str) and q[k].strip() for k in ("question", "answer"))
                for q in qs):
            raise TaskError(f"{where}: 'questions' must be a non-empty list of {{question, answer}} strings")
        if row["id"] in ids:
            raise TaskError(f"{where}: duplicate id {row['id']!r}")
        if not all(c.isalnum() or c in "-_." for c in row["id"]):
            raise TaskError(f"{where}: id {row['id']!r} may hold only letters, digits, '-', '_' and '.'")
        ids.add(row["id"])
        out.append({"id": row["id"], "title": str(row.get("title", "")), "passage": row["passage"], "questions": qs})
    if not out:
        raise TaskError(f"contexts file {path}: no contexts")
    return out


def edit_lines(text: str, max_lines: int) -> list[str]:
    """The training lines of a self-edit: its non-empty lines, stripped (SEAL's split_newlines), at most max_lines."""
    return [s.strip() for s in text.splitlines() if s.strip()][:max_lines]


def train_texts(lines: list[str], ctx: dict, cfg: SealConfig) -> list[str]:
    """The inner update's sequences: each edit line, then the passage itself (always added, SEAL §4.1)."""
    t = cfg.template("sequence_template")
    return [t.format(title=ctx["title"], text=s) for s in [*lines, ctx["passage"]]]


# ------------------------------------------------------------------------------------------------ inner update
def closed_book_accuracy(model, tokenizer, ctx: dict, cfg: SealConfig) -> float:
    """Share of C's questions answered right with C absent: greedy, first line, normalised exact match."""
    from selfrl.evaluate import greedy_completions

    t = cfg.template("question_template")
    prompts = [t.format(title=ctx["title"], question=q["question"]) for q in ctx["questions"]]
    texts = greedy_completions(model, tokenizer, prompts, cfg.max_answer_length)
    task = facts.FactsTask()
    right = [task.extract_answer(x) is not None and task.is_equivalent(task.extract_answer(x), q["answer"])
             for x, q in zip(texts, ctx["questions"])]
    return sum(right) / len(right)


def updated_accuracy(model, tokenizer, texts: list[str], ctx: dict, cfg: SealConfig, seed: int) -> float:
    """Closed-book accuracy after one inner update on `texts`; `model` itself is left exactly as it was."""
    from selfrl import lora

    pairs = [("", s) for s in texts]
    kw = dict(learning_rate=cfg.inner_learning_rate, batch_size=cfg.inner_batch_size, epochs=cfg.inner_epochs,
              seed=seed, progress=False)
    torch.manual_seed(seed)  # the LoRA A matrices' initialisation
    if not cfg.use_peft:
        learner = copy.deepcopy(model)
        learner.requires_grad_(True)
        sft(learner, tokenizer, pairs, **kw)
        return closed_book_accuracy(learner, tokenizer, ctx, cfg)
    learner = lora.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    try:
        sft(learner, tokenizer, pairs, **kw)
        return closed_book_accuracy(learner, tokenizer, ctx, cfg)
    finally:
        learner.unload()  # takes the LoRA layers out again: the base modules come back untouched


def edit_gain(model, tokenizer, lines: list[str], ctx: dict, cfg: SealConfig, base_accuracy: float,
              seeds: list[int]) -> float:
    """Mean over `seeds` of (accuracy after the inner update on the edit + passage) - base_accuracy. An edit with no
    line is no edit: gain 0 without an update (SEAL's server skips training on an empty request)."""
    if not lines:
        return 0.0
    texts = train_texts(lines, ctx, cfg)
    return statistics.fmean(updated_accuracy(model, tokenizer, texts, ctx, cfg, s) for s in seeds) - base_accuracy


def best_edit(gains: list[float]) -> int | None:
    """ReST^EM's E-step filter: the index of the highest gain (the first on a tie) when it is positive, else None."""
    if not gains:
        return None
    i = max(range(len(gains)), key=lambda j: (gains[j], -j))
    return i if gains[i] > 0 else None


def run_seed(*parts: int) -> int:
    """A seed for one (seed, round, context, edit, inner seed): the same numbers on a resume."""
    return int.from_bytes(json.dumps(parts).encode(), "little") % (2**31 - 1)


GainFn = Callable[..., float]


# ------------------------------------------------------------------------------------------------------ the loop
def write_edits(model, tokenizer, ctx: dict, cfg: SealConfig, seed: int) -> list[str]:
    """`num_generations` sampled self-edits for one context."""
    from selfrl.rollout import encode_prompts, generate

    prompt = cfg.template("edit_template").format(title=ctx["title"], passage=ctx["passage"])
    torch.manual_seed(seed)
    batch = encode_prompts(tokenizer, [prompt], next(model.parameters()).device)
    return generate(model, tokenizer, batch, cfg.num_generations, cfg.max_completion_length, cfg.temperature).texts


def score_context(model, tokenizer, ctx: dict, index: int, rnd: int, cfg: SealConfig, gain_fn: GainFn) -> dict:
    """One context of one round: k edits, their gains, the kept one (a JSON-ready record)."""
    edits = write_edits(model, tokenizer, ctx, cfg, run_seed(cfg.seed, rnd, index))
    base = closed_book_accuracy(model, tokenizer, ctx, cfg)
    gains = []
    for j, text in enumerate(edits):
        seeds = [run_seed(cfg.seed, rnd, index, j, s) for s in range(cfg.inner_seeds)]
        gains.append(gain_fn(model, tokenizer, edit_lines(text, cfg.max_edit_lines), ctx, cfg, base, seeds))
    return {"id": ctx["id"], "baseline": base, "edits": edits, "gains": gains, "best": best_edit(gains)}


def run_round(model, tokenizer, ctxs: list[dict], rnd: int, cfg: SealConfig, round_dir: Path,
              gain_fn: GainFn = edit_gain) -> list[dict]:
    """Score every context not yet scored in this round (each record written atomically as it finishes)."""
    out = round_dir / "contexts"
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, ctx in enumerate(tqdm(ctxs, desc=f"round {rnd} contexts", disable=not cfg.progress)):
        path = out / f"{ctx['id']}.json"
        if path.is_file():
            records.append(json.loads(path.read_text()))
            continue
        rec = score_context(model, tokenizer, ctx, i, rnd, cfg, gain_fn)
        write_json_atomic(path, rec)
        records.append(rec)
    return records


def rest_em_pairs(records: list[dict], ctxs: list[dict], cfg: SealConfig) -> list[tuple[str, str]]:
    """(edit prompt, kept edit) for every context whose best edit had a positive gain."""
    by_id = {c["id"]: c for c in ctxs}
    t = cfg.template("edit_template")
    return [(t.format(title=by_id[r["id"]]["title"], passage=by_id[r["id"]]["passage"]), r["edits"][r["best"]])
            for r in records if r["best"] is not None]


def load_generator(cfg: SealConfig, path: str | None = None):
    """(model, tokenizer) of the facts organism, `cfg.model`, or a saved round's generator."""
    from selfrl.models import load_model, resolve_device

    if path is None:
        path = str(facts.facts_organism_path(progress=cfg.progress)) if cfg.model == "facts" else cfg.model
    return load_model(path, resolve_device(cfg.device), cfg.dtype)  # character tokenizers come back as themselves


def _start(cfg: SealConfig) -> Path:
    """Create or reopen the run directory; a different config in it is an error (a resume must not change it)."""
    run = Path(cfg.output_dir)
    saved = run / "config.yaml"
    if saved.is_file():
        free = ("progress", "torch_threads")  # how a run is watched and threaded may change on a resume
        old = {k: v for k, v in yaml.safe_load(saved.read_text()).items() if k not in free}
        if old != {k: v for k, v in dataclasses.asdict(cfg).items() if k not in free}:
            raise ConfigError(f"output_dir {run} holds a SEAL run with a different config; choose another output_dir")
    else:
        run.mkdir(parents=True, exist_ok=True)
        config.save(cfg, saved)
    return run


def run_seal(cfg: SealConfig, gain_fn: GainFn = edit_gain) -> dict:
    """The whole loop (resumable); returns {"rounds": [round summaries], "promoted": round or 0}."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    ctxs = (load_contexts(cfg.contexts_file) if cfg.contexts_file else facts.contexts("train"))[: cfg.num_contexts]
    run = _start(cfg)
    pointer = run / "promoted.json"
    promoted = json.loads(pointer.read_text())["round"] if pointer.is_file() else 0
    model, tokenizer = load_generator(cfg, str(run / f"round_{promoted}" / "model") if promoted else None)
    gate = _gate(cfg, run, model, tokenizer)
    summaries = []
    for rnd in range(1, cfg.rounds + 1):
        rdir = run / f"round_{rnd}"
        if (rdir / "summary.json").is_file():
            summaries.append(json.loads((rdir / "summary.json").read_text()))
            continue
        records = run_round(model, tokenizer, ctxs, rnd, cfg, rdir, gain_fn)
        pairs = rest_em_pairs(records, ctxs, cfg)
        model.requires_grad_(True)  # peft's unload leaves the base frozen; the outer SFT trains every weight
        if pairs:  # ReST^EM's M-step: SFT on the kept (C -> edit) pairs
            sft(model, tokenizer, pairs, learning_rate=cfg.learning_rate, batch_size=cfg.per_device_train_batch_size,
                epochs=cfg.num_train_epochs, seed=run_seed(cfg.seed, rnd), progress=cfg.progress,
                desc=f"round {rnd} ReST-EM SFT")
        model.save_pretrained(rdir / "model")
        tokenizer.save_pretrained(rdir / "model")
        gains = [g for r in records for g in r["gains"]]
        summary = {"round": rnd, "contexts": len(records), "kept": len(pairs), "mean_gain": statistics.fmean(gains),
                   "best_gain": statistics.fmean(max(r["gains"]) for r in records), "promoted": True}
        if gate is not None:
            summary.update(gate.score(model, tokenizer))
            regressed = gate.regressions(summary)
            summary["promoted"] = not regressed
            if regressed:  # the regressed generator stays on disk; the next round starts from the last promoted one
                from selfrl.safety import describe

                summary["regressions"] = describe(regressed)
                log.warning("round %d generator not promoted: %s", rnd, summary["regressions"])
                model, tokenizer = load_generator(cfg, str(run / f"round_{promoted}" / "model") if promoted else None)
        if summary["promoted"]:
            promoted = rnd
            write_json_atomic(pointer, {"round": rnd, "path": str(rdir / "model")})
        write_json_atomic(rdir / "summary.json", summary)
        log.info("round %d: %s", rnd, {k: v for k, v in summary.items() if k != "round"})
        summaries.append(summary)
    return {"rounds": summaries, "promoted": promoted}


def _gate(cfg: SealConfig, run: Path, model, tokenizer):
    """The probe gate, its start-model baseline scored on the first start (reused on a resume); None without probes."""
    if cfg.probes is None:
        return None
    from selfrl.safety import BASELINE, ProbeGate
    from selfrl.tasks import load_task

    resume = (run / BASELINE).is_file()
    gate = ProbeGate(run, cfg.probes, load_task(cfg.probe_task), cfg.probe_tolerance, cfg.max_answer_length,
                     batch_size=64, resume=resume)
    if not resume:
        if (run / "promoted.json").is_file():
            raise SelfRLError(f"probes: {run} was started without probes; start a new run with probes set")
        gate.set_baseline(gate.score(model, tokenizer))
    return gate
