"""`selfrl evolve CONFIG`: an open-ended archive that evolves label-free self-training recipes (issue 18).

The search of the Darwin Gödel Machine (arXiv 2505.22954, methods.md §7), with selfrl recipes in place of coding
agents. What we keep from the paper:
  * an archive of every child that ran ("compiled"), or only those within `keep_margin` of the start
    (`archive_update: keep_better`), each node with its parent, its diff from the parent, its scores, its runs;
  * parents drawn with weight sigmoid(10·(score − 0.5)) / (1 + children in the archive) (`selection: dgm`, the
    paper's `score_child_prop`), with `score_prop`, `random`, `best` and `latest` (the paper's "DGM w/o
    open-ended exploration": always the newest archive member) for comparison;
  * staged evaluation: every child first gets a short run (the first `stages` entry: fewer steps, a smaller
    validation subset); only a child past that stage's threshold gets the next, longer one (more seeds if given).
What we change: a child is a config (a dict of train-config overrides on top of `base`, optionally edits to one
user-editable file), not source code; the mutator is a built-in perturbation over declared ranges or an LLM at an
OpenAI-compatible endpoint (selfrl/lab/proposer.py); selection is seeded per child ("evolve/SEED/INDEX"), so a
search is reproducible and resumes bit-for-bit.

Keeping the evaluator out of the recipes' reach (the paper's §5: variants removed the markers their evaluator
checked): the score is `val/accuracy`, greedy accuracy on the task's labelled val split, which the child's run
computes and the search reads from its metrics.jsonl; a recipe can change only the allow-listed fields of
selfrl/lab/recipe.py within the declared ranges, so it can neither read labels nor change what is evaluated. The
evaluator (the task's source, its val split, selfrl's scoring code, the probe file and scorer when `probes` is set,
and any `evaluator_files`) is hashed at the start into OUT/evaluator.json (selfrl/lab/evaluator.py) and checked
before every child: a changed evaluator stops the search with an error.

State lives in OUT/archive.json, rewritten atomically after every change; a child that was running when the search
was killed is re-run from scratch on resume (deterministic: its recipe was written before it started). Launch:
    selfrl evolve selfrl/lab/configs/evolve.yaml              # one search (config: `selection`, `seed`)
    selfrl evolve selfrl/lab/configs/evolve.yaml --compare    # `compare` selections x `search_seeds`, one report
Children run one at a time: on 1 CPU set `torch_threads: 1` in base; on a GPU, `device: cuda` in base.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from selfrl.checkpoint import write_json_atomic
from selfrl.config import read_yaml_mapping
from selfrl.grpo_config import Config, apply_overrides
from selfrl.errors import ConfigError, SelfRLError
from selfrl.lab import proposer, recipe
from selfrl.lab.evaluator import check_evaluator, sha
from selfrl.lab.sandbox import RunResult, cache_key, default_command, run_child

log = logging.getLogger("selfrl")

SELECTIONS = ("dgm", "score_prop", "random", "best", "latest")
KEYS = ("output_dir", "seed", "selection", "archive_update", "keep_margin", "budget", "mutator", "max_fields",
        "proposer_url", "proposer_model", "proposer_timeout_s", "proposer_api_key_env", "child_timeout_s",
        "child_memory_mb", "command", "evaluator_files", "editable", "compare", "search_seeds", "heldout_seeds",
        "base", "space", "stages")
NOT_COMPARED = ("output_dir", "budget", "compare", "search_seeds", "heldout_seeds")  # may change on resume
PER_RUN = ("output_dir", "seed")  # the search sets these for each run
ARCHIVE = "archive.json"


@dataclass
class Stage:
    sets: dict  # config fields of this stage's runs (max_steps, eval_limit, ...)
    seeds: list[int]
    threshold: float | None = None  # pass to the next stage when the mean score >= this ...
    root_margin: float | None = None  # ... and >= the start recipe's score at this stage - root_margin


@dataclass
class EvolveConfig:
    """An evolve file (selfrl/lab/configs/evolve.yaml shows every key); docs/evolve.md explains each."""

    path: Path
    raw: dict  # the file as parsed: recorded in the archive, compared on resume
    base: dict  # train-config fields under every recipe (no seed or output_dir: set per run)
    space: dict  # {field: recipe.Range}: the allow-listed fields a recipe may change, with their ranges
    stages: list[Stage]  # staged evaluation, cheapest first
    output_dir: str = "runs/evolve"  # the search directory (--out overrides it)
    seed: int = 0  # seeds parent draws and the built-in mutator: child i draws from "evolve/SEED/i"
    selection: str = "dgm"  # dgm, score_prop, random, best or latest
    archive_update: str = "keep_all"  # keep_all, or keep_better: only children within keep_margin of the start
    keep_margin: float = 0.1  # DGM's noise_leeway
    budget: dict = field(default_factory=lambda: {"children": 20})  # children, steps and/or minutes
    mutator: str = "builtin"  # builtin (perturb fields of the space) or proposer (an LLM endpoint)
    max_fields: int = 2  # the built-in mutator changes 1..max_fields fields per child
    proposer_url: str | None = None  # an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    proposer_model: str | None = None  # the model name sent to it
    proposer_timeout_s: float = 120.0  # an answer slower than this is a rejected proposal
    proposer_api_key_env: str | None = "OPENAI_API_KEY"  # environment variable holding a bearer token, if any
    child_timeout_s: float = 3600.0  # a run past this is killed with its process group: a failed child
    child_memory_mb: int | None = 16384  # address-space limit of a run (RLIMIT_AS); null: none
    command: list[str] | None = None  # the child command, the run's config file appended (null: selfrl train)
    evaluator_files: list[str] = field(default_factory=list)  # more files the score depends on, hashed
    editable: dict | None = None  # {file, field}: a file recipes may edit, and the config field naming it
    compare: list[str] = field(default_factory=lambda: ["dgm", "latest", "random"])  # selections of --compare
    search_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # search seeds of --compare
    heldout_seeds: list[int] = field(default_factory=list)  # after the budget: start and best re-run on these


def _num(v, where: str, low: float = 0.0, integer: bool = False, optional: bool = False):
    if v is None and optional:
        return None
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= low
    if not ok or (integer and v != int(v)):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'} >= {low}, got {v!r}")
    return int(v) if integer else float(v)


def _seeds(v, where: str) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in v) \
            or len(set(v)) != len(v):
        raise ConfigError(f"{where}: expected a list of distinct integers, got {v!r}")
    return v


def child_config(ec: EvolveConfig, node_recipe: dict, stage: Stage, seed: int, output_dir: str) -> Config:
    """defaults <- base <- recipe <- stage `set` <- {seed, output_dir}, validated."""
    cfg = apply_overrides(Config(), ec.base, f"{ec.path}: base")
    cfg = apply_overrides(cfg, node_recipe, "recipe")
    cfg = apply_overrides(cfg, stage.sets, f"{ec.path}: stages")
    return apply_overrides(cfg, {"seed": seed, "output_dir": output_dir}, "evolve").validate()


def config_error(ec: EvolveConfig, node_recipe: dict) -> str | None:
    """Why a recipe's child configs are invalid at some stage (the ConfigError's message), or None when all are
    valid."""
    try:
        for stage in ec.stages:
            child_config(ec, node_recipe, stage, stage.seeds[0], "unused")
    except ConfigError as e:
        return str(e)
    return None


def load_evolve(path: str | Path, overrides: dict | None = None) -> EvolveConfig:
    """Parse and check an evolve file; every problem is a one-line ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"evolve file not found: {path}")
    data = read_yaml_mapping(path)  # YAML 1.2, repeated keys refused (selfrl/yamlio.py)
    data.update(overrides or {})
    for key in data:
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(KEYS)})")
    base = data.get("base") or {}
    if not isinstance(base, dict) or any(k in base for k in PER_RUN):
        raise ConfigError(f"{path}: base: a mapping of train-config fields without {' or '.join(PER_RUN)}")
    if base.get("method") in recipe.LABELLED_METHODS or base.get("early_stopping_patience") is not None:
        raise ConfigError(f"{path}: base: a searched recipe must be label-free "
                          "(no oracle, no early stopping on labels)")
    space = recipe.parse_space(data.get("space"), f"{path}: space")
    stages = []
    if not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ConfigError(f"{path}: stages: expected a non-empty list of {{set, seeds, threshold, root_margin}}")
    for i, s in enumerate(data["stages"]):
        w = f"{path}: stages[{i}]"
        if not isinstance(s, dict) or not set(s) <= {"set", "seeds", "threshold", "root_margin"}:
            raise ConfigError(f"{w}: expected a mapping with keys set, seeds, threshold, root_margin")
        sets = s.get("set") or {}
        clash = sorted(set(sets) & (set(space) | set(PER_RUN))) if isinstance(sets, dict) else ["(not a mapping)"]
        if clash:
            raise ConfigError(f"{w}: set: {clash[0]!r} is a recipe field or set per run")
        seeds = _seeds(s.get("seeds", [0]), f"{w}.seeds")
        if not seeds:
            raise ConfigError(f"{w}.seeds: at least one seed")
        stages.append(Stage(sets, seeds,
                            _num(s.get("threshold"), f"{w}.threshold", optional=True),
                            _num(s.get("root_margin"), f"{w}.root_margin", optional=True)))
    known = {k: data[k] for k in KEYS if k in data and k not in ("base", "space", "stages")}
    ec = EvolveConfig(path, data, base, space, stages, **known)
    for key in ("output_dir", "proposer_url", "proposer_model", "proposer_api_key_env"):
        value = getattr(ec, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{path}: {key}: expected a non-empty string, got {value!r}")
    if ec.selection not in SELECTIONS or not isinstance(ec.compare, list) \
            or any(s not in SELECTIONS for s in ec.compare):
        raise ConfigError(f"{path}: selection/compare: choose from {', '.join(SELECTIONS)}")
    if ec.archive_update not in ("keep_all", "keep_better") or ec.mutator not in ("builtin", "proposer"):
        raise ConfigError(f"{path}: archive_update is keep_all or keep_better; mutator is builtin or proposer")
    if ec.mutator == "proposer" and not (ec.proposer_url and ec.proposer_model):
        raise ConfigError(f"{path}: mutator: proposer needs proposer_url and proposer_model")
    if not isinstance(ec.budget, dict) or not ec.budget or not set(ec.budget) <= {"children", "steps", "minutes"}:
        raise ConfigError(f"{path}: budget: a mapping of children, steps and/or minutes")
    for k, v in ec.budget.items():
        _num(v, f"{path}: budget.{k}", low=0 if k == "minutes" else 1, integer=k != "minutes")
    _num(ec.seed, f"{path}: seed", integer=True)
    _num(ec.max_fields, f"{path}: max_fields", low=1, integer=True)
    _num(ec.child_timeout_s, f"{path}: child_timeout_s", low=1)
    _num(ec.child_memory_mb, f"{path}: child_memory_mb", low=64, integer=True, optional=True)
    _num(ec.keep_margin, f"{path}: keep_margin")
    _seeds(ec.search_seeds, f"{path}: search_seeds")
    if not isinstance(ec.compare, list) or not ec.compare or not ec.search_seeds:
        raise ConfigError(f"{path}: compare and search_seeds: non-empty lists")
    if not isinstance(ec.evaluator_files, list) or not all(isinstance(f, str) for f in ec.evaluator_files):
        raise ConfigError(f"{path}: evaluator_files: a list of paths")
    _seeds(ec.heldout_seeds, f"{path}: heldout_seeds")
    if ec.command is not None and (not isinstance(ec.command, list) or not ec.command
                                   or not all(isinstance(c, str) for c in ec.command)):
        raise ConfigError(f"{path}: command: a non-empty list of strings (the config file is appended)")
    if ec.editable is not None:
        ed = ec.editable
        if not isinstance(ed, dict) or set(ed) != {"file", "field"} or ed["field"] not in recipe.PATCH_FIELDS:
            raise ConfigError(f"{path}: editable: {{file: PATH, field: {' or '.join(recipe.PATCH_FIELDS)}}}")
        if not Path(ed["file"]).is_file():
            raise ConfigError(f"{path}: editable.file not found: {ed['file']}")
        if base.get(ed["field"]) != ed["file"]:  # the start recipe runs the file as it is; children, their edits
            raise ConfigError(f"{path}: editable.file must be what base.{ed['field']} names ({ed['file']})")
    for st in stages:  # every stage's start config is built now: a typo fails in a second, not after an hour
        child_config(ec, {}, st, st.seeds[0], "unused")
    return ec


# ---------------------------------------------------------------------------------------------- selection
def members(nodes: list[dict]) -> list[dict]:
    """The archive proper: nodes that ran and were kept, in order."""
    return [n for n in nodes if n["status"] == "ok" and n["kept"]]


def parent_probabilities(nodes: list[dict], method: str) -> dict[int, float]:
    """{node id: probability of being drawn as the next parent} over the archive members (DGM_outer.py's
    choose_selfimproves). dgm: sigmoid(10·(score − 0.5)) / (1 + children in the archive), normalised; score_prop:
    the sigmoid alone; random: uniform; best: the highest score (first on ties); latest: the newest member."""
    arch = members(nodes)
    if not arch:
        raise SelfRLError("the archive is empty: the start recipe itself failed (see its log in the archive)")
    if method == "latest":
        return {arch[-1]["id"]: 1.0}
    if method == "best":
        return {max(arch, key=lambda n: (n["score"], -n["id"]))["id"]: 1.0}
    children = {n["id"]: sum(m["parent"] == n["id"] for m in arch) for n in arch}
    weights = {}
    for n in arch:
        w = 1.0 if method == "random" else 1.0 / (1.0 + math.exp(-10.0 * (n["score"] - 0.5)))
        weights[n["id"]] = w / (1.0 + children[n["id"]]) if method == "dgm" else w
    total = sum(weights.values())
    return {i: w / total for i, w in weights.items()}


def select_parent(nodes: list[dict], method: str, rng: random.Random) -> int:
    probs = parent_probabilities(nodes, method)
    ids = sorted(probs)
    return rng.choices(ids, weights=[probs[i] for i in ids], k=1)[0]


def stage_passes(stage: Stage, score: float, root_score: float | None) -> bool:
    """Whether a child's mean score at `stage` earns it the next stage."""
    if stage.threshold is not None and score < stage.threshold:
        return False
    return stage.root_margin is None or root_score is None or score >= root_score - stage.root_margin


# ---------------------------------------------------------------------------------------------- the archive
def defaults(ec: EvolveConfig) -> dict:
    """Every train-config field's value under the base: what a recipe that leaves a field alone runs with."""
    return {**Config().to_dict(), **ec.base}


def new_node(nid: int, parent: int | None, rec: dict, diff: dict, patch: list, origin: str, why: str = "",
             answer: str | None = None) -> dict:
    return {"id": nid, "parent": parent, "origin": origin, "recipe": rec, "diff": diff, "patch": patch, "why": why,
            "answer": answer, "status": "running", "error": None, "scores": [], "score": None, "full": False,
            "kept": False, "safety": {}, "metrics": {}, "runs": [], "log_tail": ""}


def load_archive(ec: EvolveConfig, out: Path) -> dict:
    """The archive on disk, or a new one; a search with another config in `out` is an error, not a silent mix."""
    config = json.loads(json.dumps({k: v for k, v in ec.raw.items() if k not in NOT_COMPARED}))
    path = out / ARCHIVE
    if not path.is_file():
        return {"version": 1, "config": config, "elapsed_s": 0.0, "nodes": [], "heldout": {}}
    archive = json.loads(path.read_text())
    if archive.get("config") != config:
        diff = sorted(k for k in set(config) | set(archive.get("config", {}))
                      if config.get(k) != archive.get("config", {}).get(k))
        raise ConfigError(f"{out} holds a search with another config (differs in: {', '.join(diff)}); "
                          "choose another output_dir or restore the config (only budget may change on resume)")
    return archive


def spent(archive: dict) -> dict:
    """Budget used: children proposed (the start recipe is not one), training steps run, and minutes of the
    search's wall time over all its sessions (proposals, rejections and cache hits cost time too, so a search
    bounded in minutes alone ends even when its children cost nothing)."""
    runs = [r for n in archive["nodes"] for r in n["runs"]]
    return {"children": len(archive["nodes"]) - 1, "steps": sum(r["max_steps"] for r in runs),
            "minutes": archive["elapsed_s"] / 60}


def failure_log(nodes: list[dict], parent: int) -> str:
    """The error and log tail of the parent's newest failed child: what went wrong last time from this parent."""
    failed = [n for n in nodes if n["parent"] == parent and n["status"] in ("failed", "rejected")]
    return f"{failed[-1]['error']}\n{failed[-1]['log_tail']}" if failed else ""


def editable_text(ec: EvolveConfig, edits: list) -> str:
    return recipe.apply_edits(Path(ec.editable["file"]).read_text(), edits, f"editable {ec.editable['file']}")


def propose_child(ec: EvolveConfig, nodes: list[dict]) -> dict:
    """The next node: a parent drawn by `ec.selection` and a change from the mutator. A proposal that breaks the
    schema or the ranges comes back as a node with status "rejected" and the reason."""
    nid = len(nodes)
    rng = random.Random(f"evolve/{ec.seed}/{nid}")  # per child, so a resumed search draws what it would have
    parent = nodes[select_parent(nodes, ec.selection, rng)]
    base = defaults(ec)
    edits, why, answer = [], "", None
    if ec.mutator == "builtin":
        # A draw that makes an invalid config (e.g. corewarding with offline_labels) is drawn again rather than spent
        # as a failed child: the mutator knows nothing of the rules between fields, Config.validate does.
        for _ in range(100):
            change = recipe.mutate(parent["recipe"], base, ec.space, rng, ec.max_fields)
            invalid = config_error(ec, {**parent["recipe"], **change})
            if invalid is None:
                break
        else:
            node = new_node(nid, parent["id"], parent["recipe"], {}, parent["patch"], "builtin")
            node.update(status="rejected", error=f"the built-in mutator drew no valid config in 100 tries: {invalid}")
            log.warning("evolve: child %d: %s", nid, node["error"])
            return node
    else:
        try:
            text = editable_text(ec, parent["patch"]) if ec.editable else None
            chat = proposer.messages(parent, base, ec.space, text, failure_log(nodes, parent["id"]))
            api_key = os.environ.get(ec.proposer_api_key_env) if ec.proposer_api_key_env else None
            answer = proposer.ask(ec.proposer_url, ec.proposer_model, chat, ec.proposer_timeout_s, api_key)
            effective = {**base, **parent["recipe"]}  # a "change" to the value the parent already runs with is none
            change, edits, why = proposer.parse_answer(answer, ec.space, effective, text is not None)
            if edits:
                recipe.apply_edits(text, edits, "patch")
        except recipe.RecipeError as e:
            node = new_node(nid, parent["id"], parent["recipe"], {}, parent["patch"], "proposer", answer=answer)
            node.update(status="rejected", error=f"proposal rejected: {e}")
            log.warning("evolve: child %d: proposal rejected: %s", nid, e)
            return node
    rec = {**parent["recipe"], **change}
    return new_node(nid, parent["id"], rec, recipe.recipe_diff(parent["recipe"], rec, base), parent["patch"] + edits,
                    ec.mutator, why, answer)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def run_stage_seed(ec: EvolveConfig, rec: dict, stage: Stage, seed: int, where: Path, name: str, cache_dir: Path,
                   extra: str) -> tuple[RunResult, bool, int]:
    """One run of a recipe (result, from the cache?, max_steps); a config the recipe makes invalid raises
    ConfigError. Results of runs that scored are cached by config: the searches of --compare share their start."""
    cfg = child_config(ec, rec, stage, seed, str(where / name))
    text = cfg.to_dict()
    text.pop("output_dir")
    command = ec.command or default_command()
    hit = cache_dir / f"{cache_key(yaml.safe_dump(text, sort_keys=True), extra + json.dumps(ec.command))}.json"
    if hit.is_file():
        return RunResult(**json.loads(hit.read_text())), True, cfg.max_steps
    cfg.save(where / f"{name}.yaml")
    result = run_child(command, where / f"{name}.yaml", where / name, where / f"{name}.log", ec.child_timeout_s,
                       ec.child_memory_mb)
    if result.status == "ok":
        write_json_atomic(hit, result.__dict__)
    return result, False, cfg.max_steps


def materialise(ec: EvolveConfig, node: dict, where: Path, fingerprint: dict) -> tuple[dict, str]:
    """(train-config overrides, cache salt) of a node: with a patch, the patched copy of the editable file is
    written into its directory and the recipe points `editable.field` at it."""
    rec, salt = dict(node["recipe"]), json.dumps(fingerprint, sort_keys=True)
    if node["patch"]:
        text = editable_text(ec, node["patch"])
        copy = where / Path(ec.editable["file"]).name
        copy.write_text(text)
        rec[ec.editable["field"]] = str(copy.resolve())
        salt += sha(text.encode())
    return rec, salt


def evaluate(ec: EvolveConfig, out: Path, nodes: list[dict], node: dict, cache_dir: Path) -> None:
    """Run a node's stages in order, each seed in its own sandboxed child; stop at the first failed run or at a
    stage it does not pass. Fills in status, scores, score, full, kept, safety, metrics, runs."""
    where = out / "nodes" / f"{node['id']:04d}"
    shutil.rmtree(where, ignore_errors=True)  # a node interrupted by a kill is redone from scratch
    where.mkdir(parents=True)
    node.update(runs=[], scores=[], safety={}, metrics={})
    try:
        rec, salt = materialise(ec, node, where, check_evaluator(ec, out))
    except recipe.RecipeError as e:
        node.update(status="failed", error=f"patch: {e}")
        return
    for i, stage in enumerate(ec.stages):
        scores, safety = [], []
        for seed in stage.seeds:
            check_evaluator(ec, out)
            name = f"s{i}_seed{seed}"
            try:
                r, cached, steps = run_stage_seed(ec, rec, stage, seed, where, name, cache_dir, salt)
            except ConfigError as e:
                node.update(status="failed", error=f"invalid config: {e}")
                return
            node["runs"].append({"stage": i, "seed": seed, "dir": str((where / name).relative_to(out)),
                                 "status": r.status, "score": r.score, "rc": r.rc, "max_steps": steps,
                                 "wall_s": round(r.wall_s, 2), "cached": cached})
            if r.status != "ok":
                rc = f", exit code {r.rc}" if r.rc is not None else ""
                node.update(status="failed", error=f"{name}: {r.status}{rc}", log_tail=r.log_tail)
                return
            scores.append(r.score)
            safety.append(r.safety)
            node["metrics"] = r.metrics
        node["scores"].append(_mean(scores))
        node["safety"] = {k: _mean([s[k] for s in safety]) for k in safety[0] if all(k in s for s in safety)}
        gated = node["id"] != 0 and i + 1 < len(ec.stages)  # the start runs every stage: it sets the margins
        if gated and not stage_passes(stage, node["scores"][-1], nodes[0]["scores"][i]):
            break
    k = len(node["scores"]) - 1
    node.update(status="ok", score=node["scores"][-1], full=k == len(ec.stages) - 1)
    # A child whose run raised the probe gate's alarm (its probed behaviour fell beyond probe_tolerance of the
    # start's, selfrl/safety.py) never becomes a parent: misevolution must not be inherited (methods.md §8).
    alarm = node["id"] != 0 and node["safety"].get("safety/alarm", 0) > 0
    node["kept"] = not alarm and (node["id"] == 0 or ec.archive_update == "keep_all"
                                  or node["score"] >= nodes[0]["scores"][k] - ec.keep_margin)


# ---------------------------------------------------------------------------------------------- the search
def search(ec: EvolveConfig, out: Path, progress: bool = True, cache_dir: Path | None = None) -> dict:
    """Run (or resume) one search in `out` until the budget is spent, then the held-out re-runs; return the archive."""
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    check_evaluator(ec, out)
    archive = load_archive(ec, out)
    nodes = archive["nodes"]
    start, before = time.monotonic(), archive["elapsed_s"]
    archive["finished"] = False  # until the held-out runs are done: a report over --only searches waits for it

    def save() -> None:
        archive["elapsed_s"] = round(before + time.monotonic() - start, 2)
        write_json_atomic(out / ARCHIVE, archive)

    if not nodes:
        nodes.append(new_node(0, None, {}, {}, [], "start"))
        save()
    done = sum(n["status"] != "running" for n in nodes[1:])
    bar = tqdm(total=ec.budget.get("children"), initial=done, disable=not progress, unit="child",
               desc=f"evolve {ec.selection} seed {ec.seed}")
    while True:
        node = nodes[-1]
        if node["status"] == "running":  # a new node, or one a kill interrupted: (re)run it whole
            evaluate(ec, out, nodes, node, cache_dir)
            save()
            if node["id"] == 0 and node["status"] != "ok":
                raise SelfRLError(f"the start recipe failed ({node['error']}); see {out / 'nodes' / '0000'}")
            bar.update(node["id"] != 0)
            best = max(n["score"] for n in members(nodes))
            last = node["status"] if node["score"] is None else f"{node['score']:.3f}"
            bar.set_postfix(best=f"{best:.3f}", last=last)
            continue
        if any(spent(archive)[k] >= v for k, v in ec.budget.items()):
            break
        nodes.append(propose_child(ec, nodes))
        save()
        if nodes[-1]["status"] == "rejected":
            bar.update(1)
    bar.close()
    heldout(ec, out, archive, cache_dir)
    archive["finished"] = True
    save()
    return archive


def best_full(nodes: list[dict]) -> dict:
    """The best archive member that passed every stage (the start recipe always has)."""
    return max((n for n in members(nodes) if n["full"]), key=lambda n: (n["score"], -n["id"]))


def heldout(ec: EvolveConfig, out: Path, archive: dict, cache_dir: Path) -> None:
    """The start recipe and the best one, re-run with the last stage's settings on `heldout_seeds` (seeds no
    search stage used), so the verdict does not rest on the seeds the search selected on."""
    if not ec.heldout_seeds:
        return
    nodes, held = archive["nodes"], archive["heldout"]
    best = best_full(nodes)
    if held.get("best") != best["id"]:  # a resumed search with a larger budget found a better recipe
        held.clear()
        held["best"] = best["id"]
    stage = ec.stages[-1]
    for who, node in (("start", nodes[0]), ("best_recipe", best)):
        where = out / "heldout" / who
        where.mkdir(parents=True, exist_ok=True)
        rec, salt = materialise(ec, node, where, check_evaluator(ec, out))
        for seed in ec.heldout_seeds:
            if str(seed) in held.get(who, {}):
                continue
            r, _, _ = run_stage_seed(ec, rec, stage, seed, where, f"seed{seed}", cache_dir, salt)
            held.setdefault(who, {})[str(seed)] = {"status": r.status, "score": r.score}
            write_json_atomic(out / ARCHIVE, archive)


def parse_only(ec: EvolveConfig, only: list[str]) -> set[tuple[str, int]]:
    """`--only dgm` or `--only dgm/1` (repeatable): the (selection, search seed) pairs of --compare to run here."""
    picked = set()
    for item in only:
        selection, _, seed = item.partition("/")
        if selection not in ec.compare or (seed and (not seed.isdigit() or int(seed) not in ec.search_seeds)):
            raise ConfigError(f"--only {item}: expected SELECTION or SELECTION/SEED with a selection of compare "
                              f"({', '.join(ec.compare)}) and a seed of search_seeds {ec.search_seeds}")
        picked |= {(selection, s) for s in ec.search_seeds if not seed or s == int(seed)}
    return picked


def run_evolve(config: str | Path, out: str | Path | None = None, compare: bool = False, report_only: bool = False,
               progress: bool = True, only: list[str] | None = None) -> Path | None:
    """`selfrl evolve`: one search (or, with `compare`, each of `compare` x `search_seeds`), then the report.
    With `only` (compare alone) just those searches run, so the comparison can be split over processes that share
    the result cache; the report is written once every search of the comparison has its archive (None before)."""
    from selfrl.lab.evolve_report import write_report

    ec = load_evolve(config)
    out = Path(out or ec.output_dir)
    if only and not compare:
        raise ConfigError("--only picks searches of --compare: add --compare")
    if not compare:
        dirs = [out]
        if not report_only:
            search(ec, out, progress)
    else:
        picked = parse_only(ec, only) if only else None
        dirs = []
        for selection in ec.compare:
            for seed in ec.search_seeds:
                sub = out / selection / f"seed_{seed}"
                dirs.append(sub)
                if not report_only and (picked is None or (selection, seed) in picked):
                    search(load_evolve(config, {"selection": selection, "seed": seed}), sub, progress, out / "cache")
    missing = [d for d in dirs if not (d / ARCHIVE).is_file()]
    if only:  # another process may still be running one of the comparison's searches: report once all are done
        if missing or not all(json.loads((d / ARCHIVE).read_text()).get("finished", True) for d in dirs):
            return None
    if missing:
        raise SelfRLError(f"no archive in {missing[0]}: run the search before --report-only")
    write_report(dirs, out)
    return out
