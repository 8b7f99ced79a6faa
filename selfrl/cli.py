"""The `selfrl` command line: train, eval, probe, export, demo, safety-demo, report, study, synth, evolve, organism,
points, points-study, seal."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from selfrl.errors import SelfRLError


def _quiet_libraries() -> None:
    # transformers prints a progress bar per weight load; selfrl shows its own bars for long work.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cmd_train(args) -> None:
    from selfrl.grpo_config import load_config
    from selfrl.grpo import train

    if args.resume:
        from selfrl.rundir import resume_config

        cfg = resume_config(Path(args.resume), args.set or [])
    else:
        cfg = load_config(args.config, args.set)  # no CONFIG: the defaults, with --set on top
    out = train(cfg, resume=bool(args.resume))
    if process_index() == 0:
        print(f"run directory: {out}")


def process_index() -> int:
    """This process's rank under `accelerate launch` (0 for a plain run): process 0 alone prints results."""
    from selfrl.distributed import rank

    return rank()


def resolve_model_dir(path: str) -> str:
    """'organism', 'organism2', 'organism:TASK', 'smollm2', a .gguf file -> a model directory (run.model_source); a run
    directory -> its latest checkpoint's policy; a step_* checkpoint -> its policy; else unchanged."""
    from selfrl.checkpoint import latest_checkpoint
    from selfrl.run import model_source

    p = Path(model_source(path))
    if (p / "metrics.jsonl").is_file():
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise SelfRLError(f"{p} holds no checkpoint yet")
        p = ckpt
    if (p / "meta.json").is_file():
        return str(p / "policy")
    return str(p)


def cmd_eval(args) -> None:
    from selfrl.evaluate import greedy_accuracy
    from selfrl.models import load_model, resolve_device
    from selfrl.tasks import load_task, with_chat_template

    task = load_task(args.task)
    path = resolve_model_dir(args.model)
    model, tok = load_model(path, resolve_device(args.device))
    task = with_chat_template(task, tok, _chat_setting(args), path)
    examples = task.eval_examples(args.split)[: args.limit]
    acc, _ = greedy_accuracy(model, tok, task, examples, args.max_completion_length, args.batch_size)
    print(f"{args.split} accuracy (greedy, n={len(examples)}): {acc:.4f}")


def cmd_probe(args) -> None:
    from selfrl.models import load_model, resolve_device
    from selfrl.safety import load_probes, run_probes
    from selfrl.tasks import load_task, with_chat_template

    task = load_task(args.task)
    probes, digest = load_probes(args.probes)  # a bad probe file fails before a model is loaded
    path = resolve_model_dir(args.checkpoint)
    model, tok = load_model(path, resolve_device(args.device))
    task = with_chat_template(task, tok, _chat_setting(args), path)
    scores, _ = run_probes(model, tok, task, probes, args.max_completion_length, args.batch_size)
    counts = {c: sum(p.category == c for p in probes) for c in scores}
    print(f"probes {args.probes} (sha256 {digest[:12]}) on {path}, greedy:")
    for c, v in scores.items():
        print(f"  safety/{c}: {v:.4f} (n={counts[c]})")


def cmd_export(args) -> None:
    """Write a checkpoint's policy as a plain HF model directory (LoRA merged into its base): what
    AutoModelForCausalLM.from_pretrained and vLLM load."""
    import shutil

    from selfrl import lora
    from selfrl.checkpoint import is_sharded_policy, latest_checkpoint, read_pointers, step_dir, verify_checkpoint
    from selfrl.models import load_model

    out = args.out_dir or args.out
    if not out:
        raise SelfRLError("export: no output directory; selfrl export CHECKPOINT --out DIR")
    src = Path(args.checkpoint)
    if (src / "meta.json").is_file():  # a step_* checkpoint
        ckpt, which = src, "checkpoint"
    elif (src / "metrics.jsonl").is_file():  # a run: its promoted checkpoint when it ran the gate, else the latest
        pointers = read_pointers(src)
        which = args.pointer or ("promoted" if "promoted" in pointers else "latest")
        if which == "latest":
            ckpt = latest_checkpoint(src)
            if ckpt is None:
                raise SelfRLError(f"{src} holds no intact checkpoint")
        elif which not in pointers:
            raise SelfRLError(f"{src}: no {which!r} checkpoint (pointers: {', '.join(pointers) or 'none'})")
        else:
            ckpt = step_dir(src, pointers[which])
    else:
        raise SelfRLError(f"{src} is neither a run directory (metrics.jsonl) nor a step_* checkpoint (meta.json)")
    problem = verify_checkpoint(ckpt)
    if problem is not None:
        raise SelfRLError(f"{ckpt} is corrupt ({problem}); nothing exported")
    if Path(out).exists():
        raise SelfRLError(f"{out} already exists; choose another directory")
    if lora.is_adapter_dir(ckpt / "policy") or is_sharded_policy(ckpt / "policy"):
        import torch

        # the base with the adapter merged in, or (fsdp) the whole weights read from the checkpoint's shards
        model, tok = load_model(str(ckpt / "policy"), torch.device("cpu"))
        tmp = Path(f"{out}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)  # a half-written export never sits under the requested name
    else:
        shutil.copytree(ckpt / "policy", out)
    print(f"exported {ckpt.name} ({which}) to {out}")


def cmd_safety_demo(args) -> None:
    from selfrl.lab.refusal import run_safety_demo

    run_safety_demo(args.out, args.set)


def cmd_demo(args) -> None:
    from selfrl.lab.demo import run_demo

    run_demo(args.out, args.set)


def cmd_report(args) -> None:
    from selfrl.lab.report import write_report

    out = args.out or (Path(args.runs[0]).parent if len(args.runs) > 1 else Path(args.runs[0]))
    print(write_report([Path(r) for r in args.runs], Path(out)))
    print(f"written: {Path(out) / 'report.md'}, {Path(out) / 'report.png'}")


def cmd_study(args) -> None:
    from selfrl.lab.study import run_study

    out, outcomes = run_study(args.config, args.out, args.quick, args.only, args.set, args.report_only)
    print(f"written: {out / 'report.md'}, {out / 'curves.png'}, {out / 'summary.json'}")
    failed = [f"{o.row}/seed_{o.seed}" for o in outcomes if o.status == "failed"]
    if failed:
        raise SelfRLError(f"{len(failed)} of {len(outcomes)} runs failed ({', '.join(failed)}); see {out / 'report.md'}")


def cmd_synth(args) -> None:
    from selfrl.synth import load_synth_config, run_synth

    cfg = load_synth_config(args.config, args.set)
    counts = run_synth(cfg)["counts"]
    print(f"kept {counts['kept']} of {counts['generated']} synthesized questions: {cfg.output_dir}/questions.jsonl "
          f"(report: {cfg.output_dir}/report.md)")


def cmd_evolve(args) -> None:
    from selfrl.lab.evolve import run_evolve

    out = run_evolve(args.config, args.out, args.compare, args.report_only, progress=not args.no_progress,
                     only=args.only)
    if out is None:
        print("these searches are done; the report is written once every search of --compare has run "
              "(or run --report-only then)")
    else:
        print(f"written: {out / 'report.md'}, {out}")


def cmd_organism(args) -> None:
    from selfrl.organism import organism_spec, train_organism_dir

    stats = train_organism_dir(args.task, Path(args.out), organism_spec(args.set), progress=True)
    print(f"organism for task {stats['task']!r}: {stats['parameters']} parameters, vocabulary {stats['vocabulary']!r}, "
          f"{stats['sft_steps']} SFT steps, holdout accuracy {stats['holdout_accuracy']:.3f}; written to {args.out}")


def cmd_points(args) -> None:
    from selfrl.points_rl import load_points_config, train_points

    cfg = load_points_config(args.config, args.set)
    evals = train_points(cfg)["evals"]
    last = evals[-1] if evals else {}
    print(f"{cfg.method}: id/success@1 {last.get('id/success@1')}, ood/success@1 {last.get('ood/success@1')} after "
          f"{last.get('compute/tokens')} tokens; written: {cfg.output_dir}/summary.json")


def cmd_points_study(args) -> None:
    from selfrl.lab.points_study import run_points_study

    out = run_points_study(args.config, args.out, args.set, args.report_only, args.seed)
    print(f"written: {out / 'report.md'}, {out / 'curves.png'}, {out / 'summary.json'}")


def cmd_seal(args) -> None:
    from selfrl.seal import load_seal_config, run_seal

    cfg = load_seal_config(args.config, args.set)
    out = run_seal(cfg)
    print(f"SEAL run {cfg.output_dir}: promoted round {out['promoted']}; "
          + "; ".join(f"round {s['round']} kept {s['kept']}/{s['contexts']}, mean gain {s['mean_gain']:+.3f}"
                      for s in out["rounds"]))


def cmd_config(args) -> None:
    from selfrl.grpo_config import Config, field_docs, load_config

    cfg = load_config(args.config, args.set) if (args.config or args.set) else Config()
    docs = field_docs()
    for name, value in cfg.to_dict().items():
        print(f"{name}: {value!r}\n    {docs.get(name, '')}")


def positive_int(text: str) -> int:
    """argparse type of a count flag: an integer >= 1 (a negative --limit would be used as a slice from the end)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _generation_args(parser: argparse.ArgumentParser, task_help: str) -> None:
    """Options of the commands that score a model by greedy generation (eval, probe)."""
    parser.add_argument("--task", default="arith", help=task_help)
    parser.add_argument("--max-completion-length", type=positive_int, default=64)
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--apply-chat-template", choices=("auto", "true", "false"), default="auto",
                        help="render prompts through the tokenizer's chat template (auto: when it has one, as in training)")


def _chat_setting(args) -> bool | None:
    return {"auto": None, "true": True, "false": False}[args.apply_chat_template]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfrl", description="Label-free self-evolving RL for causal LMs (M-GRPO).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train with a YAML config")
    t.add_argument("config", nargs="?", help="YAML file of config fields (default: built-in defaults)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="greedy accuracy of a model, checkpoint or run on a labelled split")
    e.add_argument("model", help="model directory, step_* checkpoint, run directory, or 'organism'")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=positive_int, default=None, help="score at most this many examples (>= 1)")
    _generation_args(e, task_help="task whose labelled split is scored")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="oracle vs srt vs mgrpo vs mgrpo+IQR on the built-in model organism")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the demo config")
    d.set_defaults(func=cmd_demo)

    pr = sub.add_parser("probe", help="score a probe file (safety/* per category) on a model, checkpoint or run")
    pr.add_argument("checkpoint", help="model directory, step_* checkpoint, run directory (latest), or 'organism'")
    pr.add_argument("probes", help="JSONL probe file (docs/safety.md)")
    _generation_args(pr, task_help="task whose extract_answer / is_equivalent score the probes")
    pr.set_defaults(func=cmd_probe)

    x = sub.add_parser("export", help="write a checkpoint's model as a plain HF directory (LoRA merged)")
    x.add_argument("checkpoint", help="step_* checkpoint, or a run directory (its promoted checkpoint, else its latest)")
    x.add_argument("out", nargs="?", help="new directory for the model (or --out)")
    x.add_argument("--out", dest="out_dir", help="new directory for the model")
    x.add_argument("--pointer", help="in a run directory, which named checkpoint (promoted, best, healthy, early_stop)")
    x.set_defaults(func=cmd_export)

    sd = sub.add_parser("safety-demo", help="does self-training erode a trained-in refusal? the probe gate at work")
    sd.add_argument("--out", default="runs/safety")
    sd.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of every demo run")
    sd.set_defaults(func=cmd_safety_demo)

    r = sub.add_parser("report", help="plots and a start/peak/final table for run directories")
    r.add_argument("runs", nargs="+", help="run directories")
    r.add_argument("--out", help="where to write report.md and report.png")
    r.set_defaults(func=cmd_report)
    st = sub.add_parser("study", help="methods x seeds from one start, in sequence and resumable, then one report")
    st.add_argument("config", help="study YAML file (docs in selfrl/lab/study.py), or a built-in name: quick")
    st.add_argument("--out", help="study directory (default: the file's output_dir; with --quick, that + '_quick')")
    st.add_argument("--quick", action="store_true", help="apply the file's quick: overrides (a smoke pass)")
    st.add_argument("--only", nargs="+", metavar="ROW", help="run only these rows (the report still covers all)")
    st.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field of every run")
    st.add_argument("--report-only", action="store_true", help="train nothing; report on the runs that exist")
    st.set_defaults(func=cmd_study)
    sy = sub.add_parser("synth", help="the model writes new training questions, filtered, as a train_file JSONL")
    sy.add_argument("config", nargs="?", help="YAML file of synth config fields (docs/synth.md; default: built-in defaults)")
    sy.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a synth config field (repeatable)")
    sy.set_defaults(func=cmd_synth)
    ev = sub.add_parser("evolve", help="evolve label-free recipes with an open-ended archive (DGM search), resumable")
    ev.add_argument("config", help="evolve YAML file (docs/evolve.md, example: selfrl/lab/configs/evolve.yaml)")
    ev.add_argument("--out", help="search directory (default: the file's output_dir)")
    ev.add_argument("--compare", action="store_true", help="run each of the file's compare: selections x search_seeds")
    ev.add_argument("--report-only", action="store_true", help="run nothing; report on the archives that exist")
    ev.add_argument("--only", action="append", metavar="SELECTION[/SEED]",
                    help="with --compare: run only these searches (repeatable), e.g. to split them over processes")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evolve)
    o = sub.add_parser("organism", help="train a from-scratch character-level model on a task's sft_examples()")
    o.add_argument("--task", required=True, help="built-in task name or path/to/file.py:ClassName (with sft_examples)")
    o.add_argument("--out", required=True, help="new directory for the model (save_pretrained)")
    o.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the organism's spec "
                   "(hidden_size, num_hidden_layers, sft_max_steps, target_accuracy, ...; repeatable)")
    o.set_defaults(func=cmd_organism)
    pt = sub.add_parser("points", help="GeneralPoints: multi-turn RL with verifier feedback, or more SFT (docs/points.md)")
    pt.add_argument("config", nargs="?", help="YAML file of points config fields (selfrl/points_rl.py)")
    pt.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a points config field (repeatable)")
    pt.set_defaults(func=cmd_points)
    ps = sub.add_parser("points-study", help="SFT vs RL from one card-game start, at matched compute (docs/points.md)")
    ps.add_argument("config", nargs="?", help="study YAML (selfrl/lab/points_study.py; default: built-in defaults)")
    ps.add_argument("--out", help="study directory (default: the file's output_dir)")
    ps.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a study field (repeatable)")
    ps.add_argument("--report-only", action="store_true", help="train nothing; report on the runs that exist")
    ps.add_argument("--seed", type=int, help="run this seed's arms only (the report still covers all)")
    ps.set_defaults(func=cmd_points_study)
    se = sub.add_parser("seal", help="SEAL: self-edits kept by the accuracy gain they cause (ReST^EM), resumable")
    se.add_argument("config", nargs="?", help="YAML file of seal config fields (docs/seal.md; default: built-in defaults)")
    se.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a seal config field (repeatable)")
    se.set_defaults(func=cmd_seal)
    c = sub.add_parser("config", help="print every config field with its value and meaning")
    c.add_argument("config", nargs="?", help="YAML file to resolve (default: the built-in defaults)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        args.func(args)
    except SelfRLError as e:
        where = f" (process {process_index()})" if process_index() else ""  # several processes: say whose error
        print(f"selfrl: error{where}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfrl: interrupted", file=sys.stderr)
        return 130
    return 0
