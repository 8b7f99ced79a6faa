"""The self-made-questions comparison (issue 19, docs/synth.md): label-free training of organism2-writer on the
original unlabelled questions, on questions it wrote in-context, directly, on a mix, and with a proposer that learns
(and its fixed control), every row the same solver steps, 3 seeds.

    python -m selfrl.lab.synth_study [CONFIG] [--only ROW ...] [--seeds S ...] [--report-only]

CONFIG defaults to selfrl/lab/configs/synth_study.yaml (its comments give every choice). Resumable: a synthesis
with its report.json, a training run whose last checkpoint is at max_steps, a proposer loop with its report.json are
skipped; an interrupted training run resumes from its checkpoint. The report (report.md, report.json, curves.png in
output_dir) is written at the end from whatever has finished.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from importlib import resources
from pathlib import Path

from selfrl.config import read_yaml_mapping
from selfrl.errors import SelfRLError
from selfrl.organism import resolve_organism

ROWS = ("original", "in_context", "direct", "mix", "proposer", "proposer_fixed")


def _sets(d: dict) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


def _finished(run_dir: Path, max_steps: int) -> bool:
    from selfrl.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    return ckpt is not None and json.loads((ckpt / "meta.json").read_text())["step"] >= max_steps


def train_row(solver_yaml: Path, run_dir: Path, model: str, seed: int, train_file: Path | None, max_steps: int) -> None:
    """One solver run (selfrl.grpo.train), skipped when finished, resumed when interrupted."""
    from selfrl.checkpoint import latest_checkpoint
    from selfrl.grpo import train
    from selfrl.grpo_config import load_config

    if _finished(run_dir, max_steps):
        return
    sets = [f"model={model}", f"seed={seed}", f"output_dir={run_dir}"]
    sets += [f"train_file={train_file}"] if train_file else []
    cfg = load_config(solver_yaml, sets)
    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if ckpt is None and run_dir.exists():
        shutil.rmtree(run_dir)  # stopped before its first save
    train(cfg, resume=ckpt is not None)


def synthesize(spec: dict, out: Path, mode: str, seed: int) -> Path:
    """The start model's questions for one mode and seed (selfrl synth), skipped when already written."""
    from selfrl.synth import load_synth_config, run_synth

    if not (out / "report.json").is_file():
        sets = _sets({**spec["synth"], "model": spec["model"], "mode": mode, "seed": seed, "output_dir": out})
        run_synth(load_synth_config(None, sets))
    return out / "questions.jsonl"


def run(spec: dict, rows: list[str], seeds: list[int]) -> None:
    from selfrl.synth import load_synth_config, run_synth

    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    solver_yaml = out / "solver.yaml"
    solver_yaml.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in spec["solver"].items()))
    model = resolve_organism(spec["model"])
    steps = spec["solver"]["max_steps"]
    for row in rows:  # row-major: the target rows (original, in_context) finish on every seed first
        for seed in seeds:
            run_dir = out / row / f"seed_{seed}"
            if row == "original":
                train_row(solver_yaml, run_dir, model, seed, None, steps)
            elif row in ("in_context", "direct"):
                train_row(solver_yaml, run_dir, model, seed, synthesize(spec, out / "synth" / row / f"seed_{seed}",
                                                                        row, seed), steps)
            elif row == "mix":
                files = [synthesize(spec, out / "synth" / m / f"seed_{seed}", m, seed) for m in ("in_context", "direct")]
                mixed = out / "synth" / "mix" / f"seed_{seed}" / "questions.jsonl"
                mixed.parent.mkdir(parents=True, exist_ok=True)
                mixed.write_text("".join(f.read_text() for f in files))
                train_row(solver_yaml, run_dir, model, seed, mixed, steps)
            elif row in ("proposer", "proposer_fixed"):
                if not (run_dir / "report.json").is_file():
                    p = spec["proposer"]
                    if p["rounds"] * p["solver_steps"] != steps:
                        raise SelfRLError(f"proposer: rounds x solver_steps must be solver.max_steps ({steps})")
                    sets = _sets({**spec["synth"], **p, "model": spec["model"], "seed": seed, "output_dir": run_dir,
                                  "solver_config": solver_yaml, "proposer_training": row == "proposer"})
                    run_synth(load_synth_config(None, sets))
            else:
                raise SelfRLError(f"unknown row {row!r}; rows are {', '.join(ROWS)}")


# ------------------------------------------------------------------------------------------------------ report
def curve(row: str, run_dir: Path, key: str = "val/accuracy") -> list[tuple[int, float]]:
    """(step, value) of every evaluation; a proposer row's rounds stitched end to end (each round's step 0 is the
    previous round's last evaluation, so only the first round's is kept)."""
    from selfrl.logger import read_metrics

    if row.startswith("proposer"):
        points, offset = [], 0
        for r in range(1, 1000):
            d = run_dir / "solver" / f"round_{r}"
            if not (d / "metrics.jsonl").is_file():
                break
            pts = [(m["step"], m[key]) for m in read_metrics(d) if key in m]
            points += [(offset + s, v) for s, v in pts if r == 1 or s > 0]
            offset += max((s for s, _ in pts), default=0)
        return points
    if not (run_dir / "metrics.jsonl").is_file():
        return []
    return [(m["step"], m[key]) for m in read_metrics(run_dir) if key in m]


def _contaminated(files: list[Path]) -> tuple[int, int]:
    """(questions that reached training, those overlapping a val/test question): the filter checked once more."""
    from selfrl.synth_filters import ContaminationIndex
    from selfrl.tasks import load_task

    task = load_task("sums")
    index = ContaminationIndex({s: [q for q, _ in task.eval_examples(s)] for s in ("val", "test")})
    qs = [json.loads(line)["prompt"] for f in files if f.is_file() for line in f.read_text().splitlines() if line]
    return len(qs), sum(index.match(q) is not None for q in qs)


def _ms(xs: list[float], sign: str = "") -> str:
    if not xs:
        return "n/a"
    return f"{statistics.mean(xs):{sign}.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def probe_writers(spec: dict, seed: int) -> dict | None:
    """Did the proposer learn to ask at the frontier? The start writer and the trained proposer (its last round) write
    from the same 128 prompts x 4 samples (one seed), and the same solver judges both: the start model, and the
    proposer row's last solver. Returns {judge: {writer: mean proposer reward, kept fraction}}; cached in probe/."""
    import torch

    from selfrl import synth
    from selfrl.models import load_model
    from selfrl.synth_filters import ContaminationIndex

    out = Path(spec["output_dir"])
    cache = out / "probe" / f"seed_{seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    loop = out / "proposer" / f"seed_{seed}"
    rounds = spec["proposer"]["rounds"]
    if not (loop / "report.json").is_file():
        return None
    cfg = synth.load_synth_config(None, _sets({**spec["synth"], **spec["proposer"], "model": spec["model"],
                                                "seed": 10_000 + seed, "output_dir": out / "probe"}))
    _, tokenizer, task, seeds, evals = synth._load(cfg)
    index = ContaminationIndex(evals, cfg.contamination_ngram)
    prompts = synth.synthesis_prompts(cfg, seeds)
    cpu = torch.device("cpu")
    writers = {"start writer": resolve_organism(spec["model"]), "trained proposer": loop / "proposer" / f"round_{rounds}"}
    judges = {"start solver": resolve_organism(spec["model"]),
              "proposer row's last solver": _last_policy(loop / "solver" / f"round_{rounds}")}
    res: dict = {}
    for jname, jpath in judges.items():
        judge_model = load_model(str(jpath), cpu)[0].eval()
        for wname, wpath in writers.items():
            writer = load_model(str(wpath), cpu)[0].eval()
            torch.manual_seed(cfg.seed)
            texts = synth.sample_texts(writer, tokenizer, [t for t, _ in prompts], cfg.num_generations,
                                       cfg.max_completion_length, cfg.temperature, cfg.batch_size, False)
            torch.manual_seed(cfg.seed + 1)
            rows = synth.judge(texts, [sh for _, sh in prompts], cfg, seeds, index, judge_model, tokenizer, task)
            res.setdefault(jname, {})[wname] = {
                "mean_reward": sum(r["proposer_reward"] for r in rows) / len(rows),
                "kept": sum(r["reason"] is None for r in rows) / len(rows)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(res, indent=1))
    return res


def question_sets(spec: dict, seeds: list[int], sample: int = 512, votes: int = 8) -> dict:
    """Why the rows differ: for each set of training questions (the original ones; each seed's in-context and direct
    files), `sample` of its questions (seeded) answered `votes` times by the START model at T 1.0. Reported: the start
    model's greedy accuracy, its majority share, and how often its majority answer is right: the share of pseudo-
    labels a label-free run starts from that are correct. The right answer of a sums question is the sum of its
    operands, computed HERE, for this analysis only (training never sees it). Cached in question_sets.json."""
    import random

    import torch

    from selfrl import core, synth
    from selfrl.models import load_model
    from selfrl.rollout import encode_prompts, generate
    from selfrl.tasks import load_task

    out = Path(spec["output_dir"])
    cache = out / "question_sets.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    task = load_task("sums")
    sets = {"original": task.train_prompts()}
    for mode in ("in_context", "direct"):
        for seed in seeds:
            f = out / "synth" / mode / f"seed_{seed}" / "questions.jsonl"
            if f.is_file():
                sets[f"{mode}/seed_{seed}"] = [json.loads(line)["prompt"] for line in f.read_text().splitlines()]
    model, tokenizer = load_model(resolve_organism(spec["model"]), torch.device("cpu"))
    model.eval()
    length = spec["solver"]["max_completion_length"]
    res = {}
    for name, qs in sets.items():
        qs = random.Random(0).sample(qs, min(sample, len(qs)))
        gold = [str(sum(int(x) for x in q.rstrip("=").split("+"))) for q in qs]  # analysis only
        greedy = []
        for i in range(0, len(qs), 128):
            greedy += generate(model, tokenizer, encode_prompts(tokenizer, qs[i:i + 128], torch.device("cpu")), 1,
                               length, greedy=True).texts
        torch.manual_seed(0)
        texts = synth.sample_texts(model, tokenizer, qs, votes, length, 1.0, 64, False)
        maj = [core.majority_vote([task.extract_answer(t) for t in texts[i * votes:(i + 1) * votes]], task.is_equivalent)
               for i in range(len(qs))]
        res[name] = {"questions": len(sets[name]), "sampled": len(qs),
                     "greedy_accuracy": sum(task.extract_answer(t) == g for t, g in zip(greedy, gold)) / len(qs),
                     "mean_majority_share": sum(s for _, s in maj) / len(qs),
                     "label_accuracy": sum(a == g for (a, _), g in zip(maj, gold)) / len(qs),
                     "four_operands": sum(q.count("+") == 3 for q in qs) / len(qs)}
    cache.write_text(json.dumps(res, indent=1))
    return res


def training_signals(out: Path, row: str, seeds: list[int]) -> dict | None:
    """Means over every training step and seed of the label-free signals the solver's runs log."""
    from selfrl.logger import read_metrics

    dirs = [d for seed in seeds for d in ([out / row / f"seed_{seed}"] if not row.startswith("proposer") else
                                          sorted((out / row / f"seed_{seed}" / "solver").glob("round_*")))]
    rows = [m for d in dirs if (d / "metrics.jsonl").is_file() for m in read_metrics(d) if m["step"] > 0]
    keys = ("reward/pseudo", "vote/majority_share", "vote/unanimous_groups")
    return {k: statistics.mean(m[k] for m in rows if k in m) for k in keys} if rows else None


def _last_policy(run_dir: Path) -> Path:
    from selfrl.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir) / "policy"


def report(spec: dict, rows: list[str], seeds: list[int]) -> dict:
    out = Path(spec["output_dir"])
    steps = spec["solver"]["max_steps"]
    res: dict = {"rows": {}, "filters": {}, "contamination": {}}
    for row in rows:
        per = {}
        for seed in seeds:
            run_dir = out / row / f"seed_{seed}"
            c = {k: curve(row, run_dir, k) for k in ("val/accuracy", "val/mean@k", "val/maj@k")}
            g = c["val/accuracy"]
            if not g or g[-1][0] < steps:
                continue
            per[seed] = {"start": g[0][1], "final": g[-1][1], "gain": g[-1][1] - g[0][1], "curve": g,
                         **{f"{k.split('/')[1]}_gain": c[k][-1][1] - c[k][0][1] for k in ("val/mean@k", "val/maj@k")
                            if c[k]}}
            files = ([out / "synth" / row / f"seed_{seed}" / "questions.jsonl"] if row in ("in_context", "direct", "mix")
                     else [run_dir / "questions.jsonl"] if row.startswith("proposer") else [])
            if files:
                res["contamination"][f"{row}/seed_{seed}"] = _contaminated(files)
        res["rows"][row] = per
    for mode in ("in_context", "direct"):
        for seed in seeds:
            p = out / "synth" / mode / f"seed_{seed}" / "report.json"
            if p.is_file():
                res["filters"][f"{mode}/seed_{seed}"] = json.loads(p.read_text())["counts"]
    for row in ("proposer", "proposer_fixed"):
        for seed in seeds:
            p = out / row / f"seed_{seed}" / "report.json"
            if p.is_file():
                rep = json.loads(p.read_text())
                res["filters"][f"{row}/seed_{seed}"] = rep["counts"]
                res.setdefault("proposer_rounds", {})[f"{row}/seed_{seed}"] = rep["rounds"]
    for seed in seeds:
        probe = probe_writers(spec, seed)
        if probe is not None:
            res.setdefault("probe", {})[seed] = probe
    res["question_sets"] = question_sets(spec, seeds)
    res["training_signals"] = {row: training_signals(out, row, seeds) for row in rows}
    (out / "report.json").write_text(json.dumps(res, indent=1))
    (out / "report.md").write_text(markdown(res, seeds))
    plot(res, out / "curves.png")
    return res


def markdown(res: dict, seeds: list[int]) -> str:
    lines = ["| row | seeds | start (greedy) | final (greedy) | gain greedy | gain mean@4 | gain maj@4 | "
             + " | ".join(f"gain seed {s}" for s in seeds) + " |", "| --- " * (7 + len(seeds)) + "|"]
    for row, per in res["rows"].items():
        v = list(per.values())
        lines.append(f"| {row} | {len(v)} | {_ms([x['start'] for x in v])} | {_ms([x['final'] for x in v])} | "
                     f"{_ms([x['gain'] for x in v], '+')} | {_ms([x.get('mean@k_gain', math.nan) for x in v], '+')} | "
                     f"{_ms([x.get('maj@k_gain', math.nan) for x in v], '+')} | "
                     + " | ".join(f"{per[s]['gain']:+.3f}" if s in per else "n/a" for s in seeds) + " |")
    orig, ic = res["rows"].get("original", {}), res["rows"].get("in_context", {})
    lines += ["", "In-context gain / original gain, per seed: " + ", ".join(
        f"seed {s}: {ic[s]['gain']:+.3f} / {orig[s]['gain']:+.3f} = "
        f"{ic[s]['gain'] / orig[s]['gain'] if orig[s]['gain'] else math.nan:.2f}" for s in seeds if s in ic and s in orig)]
    lines += ["", "| synthesis | " + " | ".join(("generated", "unparseable", "empty", "duplicate_of_seed", "duplicate",
                                                  "near_duplicate_of_seed", "near_duplicate", "contaminated_val",
                                                  "contaminated_test", "no_answer", "below_band", "above_band", "kept"))
              + " |", "| --- " * 14 + "|"]
    for name, c in res["filters"].items():
        lines.append(f"| {name} | " + " | ".join(str(c.get(k, 0)) for k in (
            "generated", "unparseable", "empty", "duplicate_of_seed", "duplicate", "near_duplicate_of_seed",
            "near_duplicate", "contaminated_val", "contaminated_test", "no_answer", "below_band", "above_band",
            "kept")) + " |")
    lines += ["", "Questions that reached training, checked again against val+test: " + ", ".join(
        f"{k} {n} ({bad} contaminated)" for k, (n, bad) in res["contamination"].items())]
    if res.get("proposer_rounds"):
        lines += ["", "| loop | mean proposer reward of each round's writing pass (judged by that round's solver) | "
                  "kept per round |", "| --- | --- | --- |"]
        for name, rounds in res["proposer_rounds"].items():
            lines.append(f"| {name} | " + ", ".join(f"{x['mean_proposer_reward']:.3f}" for x in rounds) + " | "
                         + ", ".join(str(x["counts"]["kept"]) for x in rounds) + " |")
    if res.get("question_sets"):
        lines += ["", "| training questions | count | start model greedy | its majority share (8 at T 1) | "
                  "its majority answer right (pseudo-label accuracy) | four operands |", "| --- " * 6 + "|"]
        for name, q in res["question_sets"].items():
            lines.append(f"| {name} | {q['questions']} | {q['greedy_accuracy']:.3f} | {q['mean_majority_share']:.3f} | "
                         f"{q['label_accuracy']:.3f} | {q['four_operands']:.3f} |")
    if res.get("training_signals"):
        lines += ["", "| row | reward/pseudo | vote/majority_share | vote/unanimous_groups (means over steps, seeds) |",
                  "| --- " * 4 + "|"]
        for row, t in res["training_signals"].items():
            if t:
                lines.append(f"| {row} | {t['reward/pseudo']:.3f} | {t['vote/majority_share']:.3f} | "
                             f"{t['vote/unanimous_groups']:.3f} |")
    if res.get("probe"):
        lines += ["", "| seed | judge | start writer: mean reward (kept) | trained proposer: mean reward (kept) |",
                  "| --- | --- | --- | --- |"]
        for seed, probe in res["probe"].items():
            for judge, w in probe.items():
                a, b = w["start writer"], w["trained proposer"]
                lines.append(f"| {seed} | {judge} | {a['mean_reward']:.3f} ({a['kept']:.2f}) | "
                             f"{b['mean_reward']:.3f} ({b['kept']:.2f}) |")
    return "\n".join(lines) + "\n"


def plot(res: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row, per in res["rows"].items():
        if not per:
            continue
        steps = sorted({s for x in per.values() for s, _ in x["curve"]})
        mean = [statistics.mean(dict(x["curve"]).get(s, math.nan) for x in per.values()) for s in steps]
        ax.plot(steps, mean, marker="o", ms=3, label=f"{row} ({len(per)} seeds)")
        for x in per.values():
            ax.plot(*zip(*x["curve"]), alpha=0.2, lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xlabel("solver step")
    ax.set_ylabel("val accuracy (greedy, 512 questions)")
    ax.set_title("SRT on organism2-writer: which questions it trains on")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=str(resources.files("selfrl.lab") / "configs" / "synth_study.yaml"))
    ap.add_argument("--only", nargs="+", choices=ROWS)
    ap.add_argument("--seeds", nargs="+", type=int)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--out", help="output_dir instead of the config's")
    args = ap.parse_args(argv)
    spec = read_yaml_mapping(args.config)
    if args.out:
        spec["output_dir"] = args.out
    rows, seeds = args.only or spec["rows"], args.seeds or spec["seeds"]
    if not args.report_only:
        run(spec, rows, seeds)
    report(spec, spec["rows"], seeds)
    print((Path(spec["output_dir"]) / "report.md").read_text())


if __name__ == "__main__":
    main()
