"""One measurement in a fresh process: `python -m bench.worker '<json spec>'` prints one JSON line of results.

Each measurement runs in its own process so that its peak resident memory (ru_maxrss) is its own and no
allocator or thread-pool state leaks from one implementation into the next.

Specs (all with "threads"):
  {"kind": "selfrl", "model": DIR, "method": "srt"|"mgrpo", "iqr": bool, "B", "G", "T", "steps", "warmup", "beta"}
  {"kind": "trl",    "model": DIR, "B", "G", "T", "steps", "warmup", "beta", "gradient_checkpointing": bool}
  {"kind": "generate", "model": DIR, "B", "G", "T", "repeats"}
  {"kind": "ema", "model": DIR, "repeats"}
Step times are the wall time between consecutive ends of training steps (everything a step costs, logging
included, evaluation excluded), after `warmup` steps.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mib() -> float:
    """Resident memory now. Read after the imports and before the model is loaded, it is the baseline that makes the
    two libraries' peaks comparable: TRL's worker also imports trl, datasets and accelerate's extras."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prompts(n: int) -> list[str]:
    """The first n arith training questions, formatted as the task formats them (the same text in both libraries)."""
    from selfrl.tasks.arith import ArithTask

    task = ArithTask()
    return [task.format_prompt(q) for q in task.train_prompts()[:n]]


def selfrl_config(spec: dict, out: str):
    """The selfrl run every benchmark measures (bench.worker, bench.profile): the spec's model, method and shape,
    temperature 1, one update per batch, no evaluation or checkpoint until the end, nothing logged but metrics.jsonl."""
    from selfrl.grpo_config import Config

    return Config(model=spec["model"], task="arith", method=spec["method"], iqr_filter=spec.get("iqr", False),
                  output_dir=out, max_steps=spec["warmup"] + spec["steps"], prompts_per_step=spec["B"],
                  num_generations=spec["G"], max_completion_length=spec["T"], temperature=1.0,
                  learning_rate=1e-6, beta=spec["beta"], eval_every=10**9, eval_limit=1, save_every=0,
                  gold_diagnostics=False, progress=False, report_to="none", torch_threads=spec["threads"])


def run_selfrl(spec: dict) -> dict:
    # selfrl imports transformers' model and tokenizer classes lazily, at load time; import them here so that the
    # RSS baseline below holds what TRL's baseline holds (transformers imported), not less
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from selfrl import logger as logger_mod
    from selfrl.grpo import train

    stamps = []
    log = logger_mod.MetricsLogger.log

    def stamped(self, step, metrics):  # the end of each training step (step 0 is the start evaluation)
        if step > 0:
            stamps.append((time.perf_counter(), metrics))
        return log(self, step, metrics)

    logger_mod.MetricsLogger.log = stamped
    base = rss_mib()
    with tempfile.TemporaryDirectory() as out:
        train(selfrl_config(spec, out))
    w = spec["warmup"]
    times = [b[0] - a[0] for a, b in zip(stamps[w - 1 : -1], stamps[w:])]
    # the last step also evaluates; its logged time/step_s excludes that, so use it for the final interval
    times[-1] = stamps[-1][1]["time/step_s"]
    return {"step_s": times, "internal_step_s": [m["time/step_s"] for _, m in stamps[w:]],
            "response_tokens": [m["policy/response_length"] for _, m in stamps[w:]], "base_rss_mib": base}


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bench.rewards import trl_majority_vote

    torch.set_num_threads(spec["threads"])
    B, G, n = spec["B"], spec["G"], spec["warmup"] + spec["steps"]
    base = rss_mib()
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    data = Dataset.from_dict({"prompt": prompts(B * (n + 1))})
    stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, max_steps=n, per_device_train_batch_size=B * G, num_generations=G,
            steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1,
            max_completion_length=spec["T"], temperature=1.0, top_k=0, top_p=1.0, beta=spec["beta"],
            learning_rate=1e-6, lr_scheduler_type="cosine", warmup_steps=0.1, max_grad_norm=1.0, epsilon=0.2,
            loss_type="dapo", scale_rewards="group", use_cpu=True, bf16=False, report_to="none",
            gradient_checkpointing=spec["gradient_checkpointing"],
            # logging every step, as selfrl's worker does: TRL's per-step completions/mean_length shows it did the same work
            logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=[trl_majority_vote], args=args, train_dataset=data,
                              processing_class=tokenizer, callbacks=[Stamp()])
        trainer.train()
    w = spec["warmup"]
    logged = [h for h in trainer.state.log_history if "completions/mean_length" in h]  # one per step
    return {"step_s": [b - a for a, b in zip(stamps[w - 1 : -1], stamps[w:])], "base_rss_mib": base,
            "response_tokens": [h["completions/mean_length"] for h in logged[w:]]}


def run_generate(spec: dict) -> dict:
    """Rollout tokens/s: selfrl's sampler vs plain `model.generate` on the same prompt batch."""
    import torch

    from selfrl.models import load_model
    from selfrl.rollout import encode_prompts, generate

    torch.set_num_threads(spec["threads"])
    model, tok = load_model(spec["model"], torch.device("cpu"))
    model.eval()
    batch = encode_prompts(tok, prompts(spec["B"]), torch.device("cpu"))
    G, T = spec["G"], spec["T"]
    out = {"selfrl": [], "plain": []}
    for r in range(spec["repeats"] + 1):  # the first repeat of each warms up
        torch.manual_seed(r)
        t0 = time.perf_counter()
        ro = generate(model, tok, batch, G, T, temperature=1.0)
        dt = time.perf_counter() - t0
        if r:
            out["selfrl"].append(int(ro.response_mask.sum()) / dt)
        torch.manual_seed(r)
        t0 = time.perf_counter()
        with torch.no_grad():
            seq = model.generate(input_ids=batch["input_ids"].repeat_interleave(G, 0),
                                 attention_mask=batch["attention_mask"].repeat_interleave(G, 0), max_new_tokens=T,
                                 do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        dt = time.perf_counter() - t0
        resp = seq[:, batch["input_ids"].shape[1] :]
        is_eos = resp == tok.eos_token_id
        tokens = int(((is_eos.cumsum(1) - is_eos.long()) == 0).sum())  # up to and including the first EOS
        if r:
            out["plain"].append(tokens / dt)
    return out


def run_ema(spec: dict) -> dict:
    """Wall time of one momentum update (selfrl.core.ema_update_, fp32) over every parameter of the model."""
    import copy

    import torch

    from selfrl.core import ema_update_
    from selfrl.models import load_model

    torch.set_num_threads(spec["threads"])
    model, _ = load_model(spec["model"], torch.device("cpu"))
    momentum = copy.deepcopy(model).requires_grad_(False)
    params, anchor = list(model.parameters()), list(momentum.parameters())
    times = []
    for _ in range(spec["repeats"] + 1):
        t0 = time.perf_counter()
        ema_update_(anchor, [p.detach() for p in params], 0.99)
        times.append(time.perf_counter() - t0)
    return {"ema_s": times[1:]}


def main() -> None:
    spec = json.loads(sys.argv[1])
    run = {"selfrl": run_selfrl, "trl": run_trl, "generate": run_generate, "ema": run_ema}[spec["kind"]]
    result = run(spec)
    result["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
