"""vLLM rollouts (`use_vllm: true`; GPU only, `pip install -e '.[vllm]'`) (issue 5, item 4).

One vLLM engine runs in the training process beside the policy (TRL's "colocate" mode) and serves both models of
M-GRPO: before the policy's rollouts it is loaded with the policy's current weights, before the momentum model's
with the momentum model's current EMA weights, every step. A momentum engine that is not re-synced every step
would sample from a stale copy, and M-GRPO would silently become SRT (methods.md §1); `tests/test_vllm.py` checks
on CPU, with an engine double that runs the HF model on the weights it was sent, that the weights in the engine at
each generation are the current ones.

vLLM returns the sampled tokens. The IQR filter needs each token's entropy, which vLLM does not report, so the
rollouts are scored once under the generating model (`rollout.score`, no grad) to fill in entropy, log-prob and
self-certainty exactly as the HF sampler records them; vLLM's own sampled-token log-probs are not requested, since
that pass computes them anyway. That is one forward pass over the rollouts per model, the price of vLLM's much
faster sampling on long responses.

Weights go in by name through the model runner's `load_weights`, as TRL's colocate mode does; with LoRA each base
weight goes with the adapter's delta added (`engine_weights`) under the base's own names, so the engine always
holds a plain model.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from selfrl import lora
from selfrl.errors import ModelError
from selfrl.rollout import Rollouts, eos_ids, score


def make_engine(model_path: str, gpu_memory_utilization: float, max_model_len: int, seed: int):
    """The real vLLM engine, in this process (a one-line ModelError without vllm or without a GPU)."""
    if not torch.cuda.is_available():
        raise ModelError("use_vllm: vLLM rollouts need a CUDA GPU; torch sees none (set use_vllm: false on CPU)")
    try:
        from vllm import LLM
    except ImportError:
        raise ModelError("use_vllm: the vllm package is not installed (pip install -e '.[vllm]')") from None
    # In-process engine ("external_launcher"), so that load_weights reaches the model the engine samples from;
    # it reads the torch.distributed rendezvous variables even for one process (TRL sets them the same way).
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "29517")):
        os.environ.setdefault(key, value)
    return LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
               seed=seed, distributed_executor_backend="external_launcher", enable_prefix_caching=True)


def sampling_params(**kwargs):
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


@dataclass
class VLLMSampler:
    """A colocated engine; `load` and `generate` are all the trainer calls."""

    engine: object  # vllm.LLM (or a test double with the same methods and `llm_engine` path)

    def load(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        runner_model = self.engine.llm_engine.model_executor.driver_worker.model_runner.model
        runner_model.load_weights(weights)
        self.engine.reset_prefix_cache()  # cached prompt KV of the previous weights must not be reused

    def generate(self, model, tokenizer, prompt_batch: dict[str, torch.Tensor], num_samples: int, max_new_tokens: int,
                 temperature: float, seeds: list[int] | None = None) -> Rollouts:
        """`num_samples` completions per prompt by pure sampling (top_k 0 = off, as TRL passes it; top_p 1), as
        `rollout.generate` returns them; entropy, log-prob and self-certainty come from scoring under `model`, the
        model the engine holds. `seeds` (B,): each prompt's own seed (`request_seeds`); without them each prompt
        draws one from the torch RNG, so a resumed step (same torch seed) samples the same."""
        ids, mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]  # (B, P) left-padded
        prompts = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask)]
        if seeds is None:
            seeds = torch.randint(2**62, (len(prompts),)).tolist()
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        stop = eos_ids(model, tokenizer)
        params = [sampling_params(n=num_samples, temperature=temperature, top_p=1.0, top_k=0, max_tokens=max_new_tokens,
                                  seed=seed, stop_token_ids=stop) for seed in seeds]  # one per prompt, paired in order
        outs = self.engine.generate(prompts, sampling_params=params, use_tqdm=False)
        seqs = [list(o.token_ids) for out in outs for o in out.outputs]  # (B*k) prompt-major, EOS included
        rollouts = to_rollouts(seqs, ids, mask, num_samples, tokenizer, stop, max_new_tokens)
        with torch.no_grad():
            prompt_of = torch.arange(len(outs), device=ids.device).repeat_interleave(num_samples)
            logp, entropy, certainty = score(model, rollouts, temperature, prompt_of)
        m = rollouts.response_mask.to(logp.dtype)
        rollouts.logp, rollouts.entropy, rollouts.certainty = logp * m, entropy * m, certainty * m
        return rollouts


def request_seeds(seed: int, step: int, places: range, role: int) -> list[int]:
    """One vLLM seed per prompt, from the same stream (seed, step, place, role) as the HF sampler's noise
    (`grpo.prompt_noise`; role 0 the policy's rollouts, 1 the momentum model's).

    Why one per prompt: vLLM applies a single SamplingParams to every prompt of a call, and splits a request with n
    samples into n child requests whose seeds are seed + j (vllm/v1/engine/parallel_sampling.py,
    `_get_child_sampling_params`), each sampling from noise fixed by that number alone: its own torch.Generator
    (v1/worker/gpu_model_runner.py: `generator.manual_seed(sampling_params.seed)`) or, in model runner v2,
    Gumbel noise hashed from (seed, position) (v1/worker/gpu/sample/gumbel.py). One seed per call therefore gives
    sample j of every prompt the same noise stream. Each prompt's seed here is drawn uniformly from [0, 2^62), so the
    children's ranges [s, s + n) of two prompts overlap with probability about 2n / 2^62; and a prompt's samples
    depend on its place in the data stream only, not on which other prompts share the call or the process."""
    return [int(np.random.default_rng([seed, step, p, role]).integers(2**62)) for p in places]


def to_rollouts(seqs: list[list[int]], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, k: int, tokenizer,
                stop: list[int], max_new_tokens: int) -> Rollouts:
    """Sampled token lists (prompt-major, k per prompt) as a `Rollouts` batch in the HF sampler's layout: responses
    right-padded to the longest, cut after the first stop token, at most max_new_tokens."""
    seqs = [s[:max_new_tokens] for s in seqs]
    T = max(1, max(map(len, seqs)))
    device, pad = prompt_ids.device, tokenizer.pad_token_id
    resp = torch.full((len(seqs), T), pad, dtype=torch.long, device=device)  # (N, T)
    response_mask = torch.zeros(len(seqs), T, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        end = next((j + 1 for j, t in enumerate(s) if t in stop), len(s))  # up to and including the first EOS
        resp[i, :end] = torch.tensor(s[:end], dtype=torch.long)
        response_mask[i, :end] = 1
    is_eos = torch.isin(resp, torch.tensor(stop, device=device)) & response_mask.bool()
    texts = tokenizer.batch_decode(resp.masked_fill(is_eos, pad), skip_special_tokens=True)
    P = prompt_ids.shape[1]
    return Rollouts(torch.cat([prompt_ids.repeat_interleave(k, 0), resp], 1),
                    torch.cat([prompt_mask.repeat_interleave(k, 0), response_mask], 1), response_mask, P, texts)


def engine_weights(model, adapter: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of the model to load into the engine: a plain model's parameters, or a peft model's base
    with `adapter`'s delta added (W + scale·B·A, peft's own `get_delta_weight`) under the base's names. The sum is a
    new tensor: the base is never merged in place, so no rounding accumulates in it over thousands of syncs."""
    if not lora.is_peft(model):
        for name, p in model.named_parameters():
            yield name, p.detach()
        return
    from peft.tuners.lora import LoraLayer

    deltas = {f"{name}.base_layer.weight": module.get_delta_weight(adapter) for name, module in model.named_modules()
              if isinstance(module, LoraLayer) and adapter in module.lora_A}
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        w = p.detach() + deltas[name].to(p.dtype) if name in deltas else p.detach()
        yield name.removeprefix("base_model.model.").replace(".base_layer", ""), w
