"""SEAL (issue 17): the gain of an edit, ReST^EM's filter, resume, bad contexts files, the facts data, a real-LM smoke.

All on tiny from-scratch models at 1 thread: no cached organism is needed."""
from __future__ import annotations

import json

import pytest
import torch

from selfrl import config, seal
from selfrl.cli import main
from selfrl.organism import OrganismSpec, build_model, build_tokenizer
from selfrl.sft import sft
from selfrl.tasks import facts

TINY = OrganismSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, seed=0)
CTX = {"id": "c0", "title": "zuvo", "passage": "zuvo likes teal.",
       "questions": [{"question": "what is the color of zuvo?", "answer": "teal"}]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tiny_model(vocab: str = facts.CHARS):
    tok = build_tokenizer(vocab)
    return build_model(TINY, len(tok), max_positions=256), tok


def tiny_dir(tmp_path, vocab: str = facts.CHARS):
    model, tok = tiny_model(vocab)
    out = tmp_path / "tiny"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def cfg_of(**kw) -> seal.SealConfig:
    base = dict(progress=False, max_answer_length=8, question_template="q: {question} a: ")
    base.update(kw)
    return seal.SealConfig(**base).validate()


# ------------------------------------------------------------------------------------------------------ the gain
@pytest.mark.parametrize("use_peft", [False, True])
def test_a_useful_edit_has_positive_gain_and_an_empty_edit_zero(use_peft):
    """The tiny model is untrained: its greedy answer to the question is not "teal", so the no-update accuracy is 0
    (checked). The hand-made edit is the question's own prompt followed by its answer (the question template is set
    to one line so that an edit line can hold it); 100 epochs at lr 5e-3 on that line and the passage make the model
    reproduce it, so the updated accuracy is 1 and the gain, averaged over 2 inner seeds, is 1 - 0 = 1 (at lr 1e-2 the
    LoRA update overshot for some seeds: 1 in 4 seeds failed with peft 0.21; at 5e-3 x 100 epochs 10 of 10 pass). An
    edit with no line is no edit: gain exactly 0, and the model is left as it was."""
    model, tok = tiny_model()
    cfg = cfg_of(use_peft=use_peft, sequence_template="{text}", inner_epochs=100, inner_learning_rate=5e-3, lora_r=8, lora_alpha=16,
                 lora_target_modules="all-linear")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = seal.closed_book_accuracy(model, tok, CTX, cfg)
    assert base == 0.0
    useful = seal.edit_lines("q: what is the color of zuvo? a: teal\n", cfg.max_edit_lines)
    assert seal.edit_gain(model, tok, useful, CTX, cfg, base, seeds=[1, 2]) == pytest.approx(1.0)
    assert seal.edit_gain(model, tok, seal.edit_lines(" \n\n  ", 16), CTX, cfg, base, seeds=[1, 2]) == 0.0
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)  # LoRA unloaded


def test_train_texts_add_the_passage_and_split_lines():
    cfg = cfg_of(prompt_style="seal", question_template=None)
    lines = seal.edit_lines("1. a\n\n  2. b \n", 16)
    # SEAL's sequence template "{title}\n{text}": each line, then the passage last.
    assert seal.train_texts(lines, CTX, cfg) == ["zuvo\n1. a", "zuvo\n2. b", "zuvo\nzuvo likes teal."]
    assert seal.edit_lines("a\nb\nc", 2) == ["a", "b"]


# ------------------------------------------------------------------------------------------------------ ReST^EM
def test_best_edit_keeps_only_a_positive_gain():
    assert seal.best_edit([-0.2, 0.0, 0.1]) == 2
    assert seal.best_edit([0.0, 0.0]) is None  # no gain is not a gain
    assert seal.best_edit([-0.5, -0.1]) is None
    assert seal.best_edit([0.4, 0.4, 0.2]) == 0  # a tie goes to the first
    assert seal.best_edit([]) is None


def test_rest_em_keeps_only_positive_gain_edits_with_a_stub_gain(tmp_path):
    """Stub gains per context (rows) and edit (columns): the kept edits are context 0's edit 2 (0.1) and context 3's
    edit 0 (0.4, tied with edit 1: the first); contexts 1 (all 0) and 2 (all negative) keep nothing."""
    table = [[-0.2, 0.0, 0.1], [0.0, 0.0, 0.0], [-0.5, -0.1, -0.3], [0.4, 0.4, 0.2]]
    calls = []

    def stub(model, tok, lines, ctx, cfg, base, seeds):
        calls.append(ctx["id"])
        return table[int(ctx["id"][-1])][sum(c == ctx["id"] for c in calls) - 1]

    ctxs = [dict(CTX, id=f"c{i}") for i in range(4)]
    model, tok = tiny_model()
    cfg = cfg_of(num_generations=3, max_completion_length=8)
    records = seal.run_round(model, tok, ctxs, 1, cfg, tmp_path / "round_1", gain_fn=stub)
    assert [r["best"] for r in records] == [2, None, None, 0]
    pairs = seal.rest_em_pairs(records, ctxs, cfg)
    prompt = facts.edit_prompt(CTX["passage"])
    assert pairs == [(prompt, records[0]["edits"][2]), (prompt, records[3]["edits"][0])]


# ------------------------------------------------------------------------------------------------------ resume
def contexts_file(tmp_path, n=3):
    path = tmp_path / "ctx.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in facts.contexts("test", n)))
    return path


def test_a_resumed_run_skips_finished_contexts_and_gives_the_same_result(tmp_path):
    model_dir, ctx_file = tiny_dir(tmp_path), contexts_file(tmp_path)
    kw = dict(model=str(model_dir), contexts_file=str(ctx_file), num_contexts=3, num_generations=2,
              max_completion_length=24, inner_seeds=1, inner_epochs=1, use_peft=False, rounds=1, device="cpu",
              learning_rate=1e-2, question_template=None)
    # the stub is a deterministic function of the edit, so every context keeps an edit and the outer SFT runs
    gain = lambda model, tok, lines, ctx, cfg, base, seeds: 0.1 + 0.01 * (len("".join(lines)) % 7)  # noqa: E731
    whole = seal.run_seal(cfg_of(output_dir=str(tmp_path / "whole"), **kw), gain_fn=gain)

    seen = []

    def crash_on_third(*a):
        seen.append(a[3]["id"])
        if len(set(seen)) == 3:
            raise KeyboardInterrupt
        return gain(*a)

    cut = cfg_of(output_dir=str(tmp_path / "cut"), **kw)
    with pytest.raises(KeyboardInterrupt):
        seal.run_seal(cut, gain_fn=crash_on_third)
    assert sorted(p.name for p in (tmp_path / "cut/round_1/contexts").iterdir()) == ["test-0000.json", "test-0001.json"]
    resumed_calls = []
    resumed = seal.run_seal(cut, gain_fn=lambda *a: resumed_calls.append(a[3]["id"]) or gain(*a))
    assert resumed_calls == ["test-0002", "test-0002"]  # the third context's 2 edits only
    assert resumed == whole
    for name in ("test-0000", "test-0001", "test-0002"):
        a, b = (json.loads((tmp_path / d / f"round_1/contexts/{name}.json").read_text()) for d in ("whole", "cut"))
        assert a == b
    from safetensors.torch import load_file

    wa, wb = (load_file(tmp_path / d / "round_1/model/model.safetensors") for d in ("whole", "cut"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert seal.run_seal(cut, gain_fn=lambda *a: pytest.fail("a finished run scored again")) == whole


def test_a_resume_with_another_config_is_refused(tmp_path):
    cfg = cfg_of(output_dir=str(tmp_path / "run"))
    seal._start(cfg)
    with pytest.raises(seal.ConfigError, match="different config"):
        seal._start(cfg_of(output_dir=str(tmp_path / "run"), inner_epochs=3))
    seal._start(cfg_of(output_dir=str(tmp_path / "run"), progress=True))  # watching it differently is fine


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("text, problem", [
    ('{"id": "a", "passage": "p", "questions": [{"question": "q", "answer": "x"}]}\nnot json\n', ":2: not valid JSON"),
    ('{"id": "a", "passage": "p"}\n', "'questions' must be"),
    ('[1, 2]\n', "expected a JSON object"),
    ('{"id": "a/b", "passage": "p", "questions": [{"question": "q", "answer": "x"}]}\n', "may hold only"),
    ('\n', "no contexts"),
])
def test_a_bad_contexts_file_is_one_line_and_exit_2(tmp_path, capsys, text, problem):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    rc = main(["seal", "--set", f"contexts_file={bad}", "--set", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and problem in err and str(bad) in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_bad_config_fields_are_named(tmp_path):
    with pytest.raises(seal.ConfigError, match="num_generations"):
        config.load(seal.SealConfig, None, ["num_generations=0"])
    with pytest.raises(seal.ConfigError, match="edit_template"):
        config.load(seal.SealConfig, None, ["edit_template=no slot"])
    with pytest.raises(seal.ConfigError, match="unknown config key 'lora_rank'"):
        config.load(seal.SealConfig, None, ["lora_rank=8"])


# ------------------------------------------------------------------------------------------------------ data
def test_facts_splits_are_disjoint_and_questions_are_answerable():
    names = {s: {c["title"] for c in facts.contexts(s)} for s in ("warmup", "train", "test")}
    assert not names["warmup"] & names["train"] and not names["warmup"] & names["test"]
    assert not names["train"] & names["test"]
    for c in facts.contexts("test", 50):
        assert 3 <= len(c["questions"]) <= 6
        assert all(c["title"] in q["question"] for q in c["questions"])
        assert all(q["answer"] in c["passage"] for q in c["questions"])  # the passage holds every answer
        assert all(line.startswith("the ") for line in c["rewrite"].splitlines())
        assert not any(f"the {a} is" in c["passage"] for a, _ in c["facts"])  # the canonical form is the edit's alone
    task = facts.FactsTask()
    assert task.extract_answer("Teal.\nmore") == "teal" and task.is_equivalent("teal", " TEAL ")
    assert task.extract_answer("teal blue red") == "teal blue red" and not task.is_equivalent("teal blue red", "teal")


# ------------------------------------------------------------------------------------------------------ real LM
def test_seal_style_runs_on_a_tiny_local_qwen2_with_a_peft_lora(tmp_path):
    """The paper's implications prompt on a plain HF Qwen2 directory (random weights, a printable-ASCII character
    tokenizer): one round, a real LoRA inner update through peft; the run finishes, records every edit's gain, and
    since no edit of a random model can help (accuracy stays 0), nothing is kept and the generator is unchanged."""
    import string

    model_dir, ctx_file = tiny_dir(tmp_path, string.printable[:95]), contexts_file(tmp_path, 2)
    rc = main(["seal", "--set", f"model={model_dir}", "--set", f"contexts_file={ctx_file}", "--set", "num_contexts=2",
               "--set", "num_generations=2", "--set", "max_completion_length=16", "--set", "inner_seeds=1",
               "--set", "inner_epochs=1", "--set", "rounds=1", "--set", "device=cpu", "--set", "progress=false",
               "--set", f"output_dir={tmp_path / 'run'}"])
    assert rc == 0
    saved = config.read_yaml_mapping(tmp_path / "run/config.yaml")
    assert saved["use_peft"] is True and seal.SealConfig(**saved).style() == "seal"
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "run/round_1/contexts").iterdir())]
    assert [r["gains"] for r in recs] == [[0.0, 0.0], [0.0, 0.0]] and all(r["baseline"] == 0.0 for r in recs)
    assert json.loads((tmp_path / "run/round_1/summary.json").read_text())["kept"] == 0
    from safetensors.torch import load_file

    a, b = load_file(model_dir / "model.safetensors"), load_file(tmp_path / "run/round_1/model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # LoRA unloaded, no outer SFT


def test_the_ladder_runs_on_a_finished_run_and_writes_its_table_and_plot(tmp_path):
    """A 1-round run on the untrained tiny model, then the ladder on 2 test contexts and 2 sequential edits: every
    row is there; an untrained model knows no fact, so "no update" is 0."""
    from selfrl.lab import seal_ladder

    model_dir, ctx_file = tiny_dir(tmp_path), contexts_file(tmp_path, 2)
    cfg = cfg_of(model=str(model_dir), contexts_file=str(ctx_file), num_contexts=2, num_generations=1,
                 max_completion_length=16, inner_seeds=1, inner_epochs=1, rounds=1, device="cpu",
                 lora_target_modules="all-linear", question_template=None, output_dir=str(tmp_path / "run"))
    seal.run_seal(cfg)
    assert seal_ladder.main([str(tmp_path / "run"), "--contexts", "2", "--seeds", "0", "--forgetting-edits", "2"]) == 0
    out = json.loads((tmp_path / "run/ladder.json").read_text())
    assert list(out["rows"]) == ["no update", "passage only", "passage + untrained self-edits",
                                 "passage + SEAL round 1 edits", "passage + oracle rewrites"]
    assert out["rows"]["no update"] == [0.0]
    assert len(out["forgetting"]["first_context"]) == 3 and len(out["forgetting"]["mean_so_far"]) == 2
    assert (tmp_path / "run/ladder.png").stat().st_size > 0


def test_a_regressed_generator_is_not_promoted_and_the_next_round_starts_from_the_last_promoted(tmp_path):
    """The tiny model first memorises the questions of 3 warm-up contexts (SFT); the probes are those it answers
    right, so the start model scores 1.0 on them (checked in safety_baseline.json). An outer SFT at lr 1e-2 on every
    edit (the stub gain keeps all) overwrites that memory, so with tolerance 0 round 1 regresses: it is saved, not
    promoted, and round 2 samples its edits from the start model again (the very edits the start model draws with
    round 2's seed)."""
    from selfrl.evaluate import greedy_completions

    model, tok = tiny_model()
    qa = [(facts.question_prompt(q["question"]), q["answer"]) for c in facts.contexts("warmup", 3) for q in c["questions"]]
    sft(model, tok, qa, learning_rate=1e-2, batch_size=8, max_steps=150, progress=False)
    task = facts.FactsTask()
    got = [task.extract_answer(t) for t in greedy_completions(model, tok, [p for p, _ in qa], 8)]
    probes = [{"prompt": p[3:-4], "expect": "exact", "answer": a} for (p, a), g in zip(qa, got) if g == a]
    assert len(probes) >= 5
    probe_file = tmp_path / "probes.jsonl"
    probe_file.write_text("".join(json.dumps(p) + "\n" for p in probes))
    model_dir = tmp_path / "start"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    ctx_file = contexts_file(tmp_path, 3)
    cfg = cfg_of(model=str(model_dir), contexts_file=str(ctx_file), num_contexts=3, num_generations=2,
                 max_completion_length=16, rounds=2, device="cpu", learning_rate=1e-2, num_train_epochs=10,
                 question_template=None, probes=str(probe_file), probe_tolerance=0.0, output_dir=str(tmp_path / "run"))
    out = seal.run_seal(cfg, gain_fn=lambda *a: 1.0)
    run = tmp_path / "run"
    assert json.loads((run / "safety_baseline.json").read_text()) == {"exact": 1.0}
    first = out["rounds"][0]
    assert first["kept"] == 3 and first["promoted"] is False and first["safety/exact"] < 1.0
    assert (run / "round_1/model/model.safetensors").is_file()
    ctx0 = seal.load_contexts(ctx_file)[0]
    start_edits = seal.write_edits(model, tok, ctx0, cfg, seal.run_seed(cfg.seed, 2, 0))
    assert json.loads((run / f"round_2/contexts/{ctx0['id']}.json").read_text())["edits"] == start_edits
    assert out["promoted"] == (2 if out["rounds"][1]["promoted"] else 0)
