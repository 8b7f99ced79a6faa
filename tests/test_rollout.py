"""The hand-written sampler and scorer (selfrl/rollout.py) against transformers' own generate and forward pass."""
from __future__ import annotations

import pytest
import torch

from selfrl.core import token_entropy, token_logprobs
from selfrl.rollout import encode_prompts, eos_ids, generate, inverse_cdf, length_buckets, score


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from selfrl.models import load_model

    model, tok = load_model(str(tiny_model_dir), torch.device("cpu"))
    return model.eval(), tok


def _batch(tok, extra: str = "12+7="):
    # Prompts of different lengths, so left padding and per-row positions are exercised.
    return encode_prompts(tok, ["3+4=", "15+27=", "1+1=" + extra, "99+1="], torch.device("cpu"))


def _plain_forward(model, ro):
    """Log-probs and entropies from one ordinary forward pass over prompt + response (no sharing, no buckets)."""
    pos = (ro.attention_mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=pos).logits
    logits = logits[:, ro.prompt_len - 1 : -1]
    return token_logprobs(logits, ro.response_ids), token_entropy(logits.detach())


def test_length_buckets_by_hand():
    # Equal lengths: any cut only adds a call, so one bucket.
    assert [sorted(b) for b in length_buckets([5, 5, 5, 5])] == [[0, 1, 2, 3]]
    # Lengths 20,20,2,2 (rows 1,3 long): one bucket pads 4*20 = 80 tokens; cutting at the half gives 2*20 + 2*2 = 44,
    # plus one extra call at 5% of 80 = 4 -> 48 < 80, so rows {1,3} and {0,2}.
    assert [sorted(b) for b in length_buckets([2, 20, 2, 20])] == [[1, 3], [0, 2]]
    # Every row appears exactly once, longest bucket first.
    lens = [7, 1, 30, 12, 3, 3, 25, 9]
    buckets = length_buckets(lens)
    assert sorted(r for b in buckets for r in b) == list(range(8))
    assert [max(lens[r] for r in b) for b in buckets] == sorted([max(lens[r] for r in b) for b in buckets], reverse=True)


def test_greedy_matches_transformers_generate(tiny):
    model, tok = tiny
    batch = _batch(tok)
    ours = generate(model, tok, batch, 1, 12, greedy=True)
    ref = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(ref[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert ours.texts == texts
    # Up to and including the first EOS is response; the rest is padding.
    for row, m in zip(ours.response_ids, ours.response_mask):
        n = int(m.sum())
        assert (row[n:] == tok.pad_token_id).all()
        assert n == row.shape[0] or row[n - 1] == tok.eos_token_id


def test_score_equals_one_plain_forward_pass(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    ro = generate(model, tok, _batch(tok), 6, 12, temperature=1.0)
    mask = ro.response_mask.bool()
    assert len(set(ro.response_mask.sum(1).tolist())) > 1  # rows of different lengths: buckets and the early exit run
    ref_logp, ref_ent = _plain_forward(model, ro)
    for prompt_of in (None, torch.arange(4).repeat_interleave(6)):
        logp, ent, _ = score(model, ro, 1.0, prompt_of)
        assert torch.allclose(logp[mask], ref_logp[mask], atol=1e-4)
        assert torch.allclose(ent[mask], ref_ent[mask], atol=1e-4)
        only, none_ent, none_cert = score(model, ro, 1.0, prompt_of, stats=False)  # the trainer's log-prob passes
        assert torch.equal(only, logp) and none_ent is None and none_cert is None
    # The entropy recorded while sampling is the same quantity, so the IQR filter needs no forward pass.
    assert torch.allclose(ro.entropy[mask], ref_ent[mask], atol=1e-4)
    assert (ro.entropy[~mask] == 0).all()


def test_shared_prompt_gradient_equals_plain_gradient(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    ro = generate(model, tok, _batch(tok), 5, 12, temperature=1.0)
    mask = ro.response_mask.float()
    model.zero_grad()
    (_plain_forward(model, ro)[0] * mask).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (score(model, ro, 1.0, torch.arange(4).repeat_interleave(5))[0] * mask).sum().backward()
    for a, b in zip(ref, (p.grad for p in model.parameters())):
        # float sums in another order: equal to 1e-4 of each tensor's largest entry
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_first_token_is_sampled_from_softmax_at_temperature(tiny):
    # 4000 draws of the first response token against softmax(logits / T): every token's frequency within 4.5 sigma
    # (a wrong temperature or a biased sampler moves the frequent tokens by tens of sigma).
    model, tok = tiny
    batch = encode_prompts(tok, ["15+27="], torch.device("cpu"))
    with torch.no_grad():
        probs = torch.softmax(model(**batch).logits[0, -1] / 1.7, dim=-1)
    torch.manual_seed(2)
    ro = generate(model, tok, batch, 4000, 1, temperature=1.7)
    freq = torch.bincount(ro.response_ids[:, 0], minlength=probs.shape[0]).float() / 4000
    sigma = (probs * (1 - probs) / 4000).sqrt()
    assert ((freq - probs).abs() <= 4.5 * sigma + 1e-3).all()


def test_inverse_cdf_by_hand():
    # p = [1/8, 1/4, 0, 5/8]: the CDF is [1/8, 3/8, 3/8, 1]; token i is drawn when u falls in [cdf[i-1], cdf[i]),
    # so u = 1/16 -> 0, 1/8 -> 1 (the boundary belongs to the next token), 0.37 -> 1, 3/8 -> 3 (token 2 has
    # probability 0 and an empty interval), 0.999 -> 3. A row summing to 2 (unnormalised) gives the same draws.
    # Binary fractions, so every CDF value and boundary is exact in any float precision.
    p = torch.tensor([[0.125, 0.25, 0.0, 0.625]]).repeat(5, 1)
    u = torch.tensor([0.0625, 0.125, 0.37, 0.375, 0.999])
    assert inverse_cdf(p, u).tolist() == [0, 1, 1, 3, 3]
    assert inverse_cdf(2 * p, u).tolist() == [0, 1, 1, 3, 3]


def test_noise_samples_from_softmax_and_rows_are_independent(tiny):
    # With per-row uniforms the first token is still drawn from softmax(logits / T) (same 4.5-sigma check as above),
    # and a row's whole completion depends on its own uniforms only: sampling two prompts together or one at a time
    # (another batch, another padding) gives the same tokens. That is what makes the rollouts of a step the same on
    # one process or on several (tests/test_distributed.py).
    model, tok = tiny
    batch = encode_prompts(tok, ["15+27="], torch.device("cpu"))
    with torch.no_grad():
        probs = torch.softmax(model(**batch).logits[0, -1] / 1.7, dim=-1)
    noise = torch.rand(4000, 1, generator=torch.Generator().manual_seed(5))
    ro = generate(model, tok, batch, 4000, 1, temperature=1.7, noise=noise)
    freq = torch.bincount(ro.response_ids[:, 0], minlength=probs.shape[0]).float() / 4000
    sigma = (probs * (1 - probs) / 4000).sqrt()
    assert ((freq - probs).abs() <= 4.5 * sigma + 1e-3).all()

    noise = torch.rand(2 * 6, 12, generator=torch.Generator().manual_seed(6))
    both = generate(model, tok, encode_prompts(tok, ["3+4=", "15+27="], torch.device("cpu")), 6, 12, noise=noise)
    alone = [generate(model, tok, encode_prompts(tok, [q], torch.device("cpu")), 6, 12, noise=noise[i * 6 : (i + 1) * 6])
             for i, q in enumerate(["3+4=", "15+27="])]
    assert both.texts == alone[0].texts + alone[1].texts
    assert len(set(both.texts)) > 2  # sampled, not collapsed to one completion


def test_every_model_eos_ends_a_completion(tiny):
    model, tok = tiny
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("#")]
    try:
        assert eos_ids(model, tok) == sorted({tok.eos_token_id, tok.convert_tokens_to_ids("#")})
        torch.manual_seed(3)
        ro = generate(model, tok, _batch(tok), 8, 12, temperature=3.0)
        hash_id = tok.convert_tokens_to_ids("#")
        ended_at_hash = 0
        for row, m in zip(ro.response_ids, ro.response_mask):
            hits = (row == hash_id).nonzero()
            if len(hits):  # the response ends at the first '#': nothing after it but padding
                assert int(m.sum()) == int(hits[0]) + 1 and (row[int(hits[0]) + 1 :] == tok.pad_token_id).all()
                ended_at_hash += 1
        assert ended_at_hash > 0  # '#' was drawn, so the check above ran
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id


def test_the_kv_cache_goes_by_the_name_the_model_takes(tiny):
    # transformers 5 renamed forward's `past_key_values` to `cache` and warns on the old name at every call; the
    # sampler and scorer pass it by whichever name the model's forward (inside any peft wrapper) declares.
    import inspect
    import warnings

    from peft import LoraConfig, get_peft_model

    from selfrl.rollout import _cache_arg

    model, tok = tiny
    expected = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    assert _cache_arg(model) == expected
    wrapped = get_peft_model(type(model)(model.config), LoraConfig(r=2, target_modules=["q_proj"]))
    assert _cache_arg(wrapped) == expected
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ro = generate(model, tok, _batch(tok), 2, 6)
        score(model, ro, temperature=1.0)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
