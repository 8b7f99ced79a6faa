"""The one SFT loop (selfrl/sft.py): labels on the completion only, both schedules, early stop on a target."""
import pytest
import torch

from selfrl.organism import OrganismSpec, build_model, build_tokenizer
from selfrl.sft import sft_batches, sft, sft_batch


def test_labels_cover_the_completion_and_eos_only():
    tok = build_tokenizer()
    b = sft_batch(tok, [("1+2=", "3"), ("", "45")])
    # row 0: "1+2=" (4 prompt tokens) then "3", EOS; row 1: no prompt, "4", "5", EOS, then padding
    assert b["labels"][0].tolist()[:4] == [-100] * 4
    assert b["labels"][0].tolist()[4:6] == [tok.convert_tokens_to_ids("3"), tok.eos_token_id]
    assert b["labels"][1].tolist()[:3] == [tok.convert_tokens_to_ids("4"), tok.convert_tokens_to_ids("5"), tok.eos_token_id]
    assert b["labels"][1].tolist()[3:] == [-100] * 3  # padding is never a target
    assert b["attention_mask"][1].tolist() == [True] * 3 + [False] * 3


def test_epochs_visit_every_pair_once_per_epoch():
    gen = torch.Generator().manual_seed(0)
    seen = [i for idx in sft_batches(7, 3, gen, None, 2) for i in idx]
    # 7 pairs in batches of 3 -> 3 batches an epoch (3, 3, 1); 2 epochs -> each index exactly twice
    assert sorted(seen) == sorted(list(range(7)) * 2)


def test_sft_learns_and_stops_at_target():
    tok = build_tokenizer()
    model = build_model(OrganismSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2), len(tok))
    pairs = [("1+1=", "2"), ("2+2=", "4")]
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def evaluate():
        calls.append(1)
        return 1.0 if len(calls) >= 2 else 0.0

    out = sft(model, tok, pairs, learning_rate=1e-2, batch_size=2, max_steps=50, evaluate=evaluate, eval_every=5,
              stop_at=1.0, progress=False)
    assert out["steps"] == 10 and out["accuracy"] == 1.0  # stopped at the second evaluation, not at max_steps
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    first = sft_batch(tok, pairs)
    assert model(**first).loss.item() < 2.0  # from ~log(21)=3.0 at init toward the two memorised answers


def test_exactly_one_schedule():
    tok = build_tokenizer()
    model = build_model(OrganismSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2), len(tok))
    with pytest.raises(ValueError):
        sft(model, tok, [("1=", "1")], learning_rate=1e-3, batch_size=1, max_steps=1, epochs=1, progress=False)
