"""The SEAL ablation ladder and the forgetting curve (issue 17 item 3; SEAL arXiv 2506.10943 Table 2, Figure 6).

On held-out contexts (the facts task's `test` split, or a contexts file), per seed, closed-book accuracy after:
    no update                        the start model, nothing trained
    passage only                     inner update on the passage alone
    passage + untrained self-edits   the start model writes one edit, the start model is updated on edit + passage
    passage + SEAL round R edits     round R's generator writes one edit and is updated on it (θ' = SFT(θ_R, SE))
    passage + oracle rewrites        the start model updated on the task's exact rewrite (facts contexts only)
Every inner update is the run's own (its config.yaml: LoRA or full weights, epochs, lr); each seed draws its own
edits and inner initialisations. Forgetting: the last promoted generator writes edits for `forgetting_edits` (8)
contexts in sequence, each update merged into the weights before the next (the public code's continual_self_edits);
after each, the accuracy on the first context and the mean over the contexts edited so far.

    python -m selfrl.lab.seal_ladder RUN_DIR [--contexts 32] [--seeds 0 1 2] [--out DIR]
writes ladder.json, ladder.md and ladder.png in RUN_DIR (or --out). Reading it beside the paper: docs/seal.md.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from selfrl import config, seal
from selfrl.errors import SelfRLError
from selfrl.sft import sft
from selfrl.tasks import facts

PAPER = {"no update": 32.7, "passage only": 33.5, "passage + untrained self-edits": 39.7,
         "passage + SEAL round 2 edits": 47.0, "passage + oracle rewrites": 46.3}  # Qwen2.5-7B, SQuAD (Table 2)


def one_edit(model, tok, ctx: dict, cfg: seal.SealConfig, seed: int) -> list[str]:
    """One sampled self-edit's lines (the paper's evaluation draws n = 1)."""
    one = dataclasses.replace(cfg, num_generations=1)
    return seal.edit_lines(seal.write_edits(model, tok, ctx, one, seed)[0], cfg.max_edit_lines)


def accuracy_after(model, tok, lines: list[str] | None, ctx: dict, cfg: seal.SealConfig, seed: int) -> float:
    """Closed-book accuracy after an inner update on `lines` + passage (None: no update at all)."""
    if lines is None:
        return seal.closed_book_accuracy(model, tok, ctx, cfg)
    return seal.updated_accuracy(model, tok, seal.train_texts(lines, ctx, cfg), ctx, cfg, seed)


def ladder(run: Path, cfg: seal.SealConfig, ctxs: list[dict], seeds: list[int], progress: bool) -> dict:
    """{row: [mean accuracy over ctxs, one per seed]}."""
    start, tok = seal.load_generator(cfg)
    rounds = sorted(int(p.name.split("_")[1]) for p in run.glob("round_*") if (p / "summary.json").is_file())
    generators = {r: seal.load_generator(cfg, str(run / f"round_{r}" / "model"))[0] for r in rounds}
    rows: dict[str, list[float]] = {}
    for seed in seeds:
        acc: dict[str, list[float]] = {}
        for i, ctx in enumerate(tqdm(ctxs, desc=f"ladder seed {seed}", disable=not progress)):
            s = seal.run_seed(seed, 10_000, i)  # apart from every training seed (round numbers are small)
            acc.setdefault("no update", []).append(accuracy_after(start, tok, None, ctx, cfg, s))
            acc.setdefault("passage only", []).append(accuracy_after(start, tok, [], ctx, cfg, s))
            edit = one_edit(start, tok, ctx, cfg, s)
            acc.setdefault("passage + untrained self-edits", []).append(accuracy_after(start, tok, edit, ctx, cfg, s))
            for r, gen in generators.items():
                edit = one_edit(gen, tok, ctx, cfg, s)
                acc.setdefault(f"passage + SEAL round {r} edits", []).append(accuracy_after(gen, tok, edit, ctx, cfg, s))
            if "rewrite" in ctx:
                oracle = seal.edit_lines(ctx["rewrite"], cfg.max_edit_lines)
                acc.setdefault("passage + oracle rewrites", []).append(accuracy_after(start, tok, oracle, ctx, cfg, s))
        for row, values in acc.items():
            rows.setdefault(row, []).append(statistics.fmean(values))
    return rows


def merged_update(model, tok, texts: list[str], cfg: seal.SealConfig, seed: int):
    """`model` after one inner update, merged into its weights (LoRA merged, or the full-weight copy itself)."""
    from selfrl import lora

    kw = dict(learning_rate=cfg.inner_learning_rate, batch_size=cfg.inner_batch_size, epochs=cfg.inner_epochs,
              seed=seed, progress=False)
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    if not cfg.use_peft:
        model.requires_grad_(True)
        sft(model, tok, [("", t) for t in texts], **kw)
        return model
    learner = lora.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    sft(learner, tok, [("", t) for t in texts], **kw)
    return learner.merge_and_unload()


def forgetting(run: Path, cfg: seal.SealConfig, ctxs: list[dict], seed: int, progress: bool) -> dict:
    """Accuracy on the first context, and the mean over contexts edited so far, after each of len(ctxs) edits."""
    pointer = run / "promoted.json"
    path = json.loads(pointer.read_text())["path"] if pointer.is_file() else None
    model, tok = seal.load_generator(cfg, path)
    first, so_far = [seal.closed_book_accuracy(model, tok, ctxs[0], cfg)], []
    for i, ctx in enumerate(tqdm(ctxs, desc="forgetting", disable=not progress)):
        s = seal.run_seed(seed, 20_000, i)
        edit = one_edit(model, tok, ctx, cfg, s)
        model = merged_update(model, tok, seal.train_texts(edit, ctx, cfg), cfg, s)
        first.append(seal.closed_book_accuracy(model, tok, ctxs[0], cfg))
        so_far.append(statistics.fmean(seal.closed_book_accuracy(model, tok, c, cfg) for c in ctxs[: i + 1]))
    return {"first_context": first, "mean_so_far": so_far, "generator": path or "start"}


def write(out: Path, rows: dict, curve: dict, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "ladder.json").write_text(json.dumps({"rows": rows, "forgetting": curve, **meta}, indent=2))
    lines = [f"# SEAL ladder: {meta['run']}", "", f"{meta['contexts']} held-out contexts, seeds {meta['seeds']}; "
             "closed-book accuracy (%), mean over contexts, per seed.", "",
             "| row | mean | spread (max-min) | per seed | paper (Qwen2.5-7B, SQuAD) |", "|---|---|---|---|---|"]
    for row, v in rows.items():
        paper = PAPER.get(row, "")
        lines.append(f"| {row} | {100 * statistics.fmean(v):.1f} | {100 * (max(v) - min(v)):.1f} | "
                     f"{', '.join(f'{100 * x:.1f}' for x in v)} | {paper} |")
    lines += ["", f"Forgetting ({curve['generator']}), accuracy on the first context after 0..{len(curve['mean_so_far'])} "
              f"edits: {', '.join(f'{100 * x:.0f}' for x in curve['first_context'])}", ""]
    (out / "ladder.md").write_text("\n".join(lines))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    names = list(rows)
    a.barh(names, [100 * statistics.fmean(rows[n]) for n in names],
           xerr=[100 * (max(rows[n]) - min(rows[n])) / 2 for n in names])
    a.invert_yaxis()
    a.set_xlabel("closed-book accuracy (%)")
    b.plot(range(len(curve["first_context"])), [100 * x for x in curve["first_context"]], "o-", label="first context")
    b.plot(range(1, len(curve["mean_so_far"]) + 1), [100 * x for x in curve["mean_so_far"]], "s--",
           label="mean over edited contexts")
    b.set_xlabel("edits applied in sequence")
    b.set_ylabel("accuracy (%)")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "ladder.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selfrl.lab.seal_ladder", description=__doc__.splitlines()[0])
    p.add_argument("run", help="a `selfrl seal` run directory")
    p.add_argument("--contexts", type=int, default=32, help="held-out contexts (facts test split, or --contexts-file)")
    p.add_argument("--contexts-file", help="held-out contexts JSONL (default: the facts task's test split)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--forgetting-edits", type=int, default=8)
    p.add_argument("--out", help="where to write ladder.{json,md,png} (default: the run directory)")
    args = p.parse_args(argv)
    try:
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise SelfRLError(f"{run} is not a selfrl seal run directory (no config.yaml)")
        cfg = seal.SealConfig(**config.read_yaml_mapping(run / "config.yaml")).validate()
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        ctxs = seal.load_contexts(args.contexts_file) if args.contexts_file else facts.contexts("test")
        rows = ladder(run, cfg, ctxs[: args.contexts], args.seeds, cfg.progress)
        curve = forgetting(run, cfg, ctxs[: args.forgetting_edits], args.seeds[0], cfg.progress)
    except SelfRLError as e:
        print(f"seal_ladder: error: {e}")
        return 2
    out = Path(args.out or run)
    out.mkdir(parents=True, exist_ok=True)
    write(out, rows, curve, {"run": str(run), "contexts": min(args.contexts, len(ctxs)), "seeds": args.seeds})
    print((out / "ladder.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
