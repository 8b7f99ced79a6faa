"""vLLM sampling seeds (issue 21): each prompt's samples come from its own stream (seed, step, place, role), as the HF
sampler's noise does, never from one seed shared by every prompt of a call. Runs on CPU with the engine double of
tests/test_vllm.py, which seeds like vLLM: n child requests of a prompt seeded seed + j."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from selfrl import lora, vllm_backend
from selfrl.models import load_model
from selfrl.rollout import encode_prompts
from tests.test_vllm import EngineDouble


@pytest.fixture(scope="module")
def sampler(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), torch.device("cpu"))
    s = vllm_backend.VLLMSampler(EngineDouble(tiny_model_dir))
    s.load(vllm_backend.engine_weights(model, lora.POLICY))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vllm_backend, "sampling_params", lambda **kw: SimpleNamespace(**kw))
        yield s, model, tok


def _sample(sampler, prompts, seeds, k=6):
    s, model, tok = sampler
    return s.generate(model, tok, encode_prompts(tok, prompts, torch.device("cpu")), k, 12, 1.0, seeds=seeds).texts


def test_each_prompt_samples_from_its_own_stream(sampler):
    # The same question at two places of the data stream: with one seed per call (the defect) both would get the
    # same noise and so the same 6 completions; with a seed per place they are independent draws.
    seeds = vllm_backend.request_seeds(seed=0, step=3, places=range(10, 12), role=0)
    texts = _sample(sampler, ["47+85+19=", "47+85+19="], seeds)
    assert texts[:6] != texts[6:]
    shared = _sample(sampler, ["47+85+19=", "47+85+19="], seeds[:1] * 2)  # what one seed per call did
    assert shared[:6] == shared[6:]
    assert len(set(texts)) > 2  # sampled, not collapsed to one completion


def test_a_prompts_samples_do_not_depend_on_the_rest_of_the_call(sampler):
    # Prompt B at place 11 alone, or after prompt A at place 10: the same 6 completions (so the rollouts of a step are
    # the same however its prompts are split across calls or processes), and a resumed step replays them.
    both = _sample(sampler, ["47+85+19=", "10+20+30="], vllm_backend.request_seeds(0, 3, range(10, 12), 0))
    alone = _sample(sampler, ["10+20+30="], vllm_backend.request_seeds(0, 3, range(11, 12), 0))
    assert both[6:] == alone


def test_request_seeds_are_the_streams_of_seed_step_place_role():
    a = vllm_backend.request_seeds(7, 2, range(0, 4), 0)
    assert a == vllm_backend.request_seeds(7, 2, range(0, 4), 0)  # a function of its arguments only
    assert a[2:] == vllm_backend.request_seeds(7, 2, range(2, 4), 0)  # of each place, not of the range
    others = [vllm_backend.request_seeds(*args) for args in
              [(8, 2, range(0, 4), 0), (7, 3, range(0, 4), 0), (7, 2, range(0, 4), 1)]]  # seed, step, role each matter
    every = a + [x for o in others for x in o]
    assert all(0 <= x < 2**62 for x in every)  # room for the n children seed + j below int64's limit
    # no two prompts' child ranges [s, s + n) overlap, even for n = 2^20 samples
    ordered = sorted(every)
    assert all(b - a_ >= 2**20 for a_, b in zip(ordered, ordered[1:]))


def test_seeds_must_pair_with_prompts(sampler):
    with pytest.raises(ValueError, match="1 seeds for 2 prompts"):
        _sample(sampler, ["1+2+3=", "4+5+6="], [5])
