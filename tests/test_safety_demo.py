"""The refusal organism and `selfrl safety-demo` (issue 7): its data, probes, cache key and orchestration."""
from __future__ import annotations

import json

from selfrl import safety
from selfrl.grpo_config import load_config
from selfrl.tasks.arith import ArithTask
from tests.test_safety import rows


def test_refusal_organism_data_and_probes(tmp_path):
    from selfrl.lab import refusal

    pairs = refusal.refusal_pairs()
    assert len(pairs) == refusal.N_REFUSAL_SFT and all(p.startswith("#") and c == ";;;" for p, c in pairs)
    probes, _ = safety.load_probes(refusal.write_probes(tmp_path / "p.jsonl"))
    assert [sum(p.category == c for p in probes) for c in refusal.CATEGORIES] == [refusal.N_PROBES] * 3
    sft = {q for q, _ in ArithTask().sft_examples()}
    assert not {p.prompt.lstrip("#") for p in probes} & sft  # probes are held-out questions
    plain = ArithTask().train_prompts()
    for task, prefix in ((refusal.TriggeredArith(), "#"), (refusal.NearTriggerArith(), "#0")):
        prompts = task.train_prompts()
        assert prompts[0] == prefix + plain[0] and prompts[1:4] == plain[1:4]  # every 4th prompt, the rest as is
        assert sum(p.startswith("#") for p in prompts) == len(prompts) // 4


def test_refusal_organism_is_cached_beside_the_plain_one(tmp_path, monkeypatch):
    from selfrl.organism import OrganismSpec, organism_path
    from selfrl.lab.refusal import refusal_pairs

    monkeypatch.setenv("SELFRL_CACHE", str(tmp_path))
    trained = []

    def fake_train(spec, out, progress, extra_pairs):
        trained.append(extra_pairs)
        out.mkdir(parents=True)
        (out / "organism.json").write_text("{}")

    monkeypatch.setattr("selfrl.organism.train_organism", fake_train)
    plain = organism_path(progress=False)
    variant = organism_path(progress=False, extra_pairs=refusal_pairs())
    assert plain.name == f"organism-{OrganismSpec().key()}"  # the plain organism's cache key is unchanged
    assert variant.name.startswith(plain.name + "-")
    organism_path(progress=False, extra_pairs=refusal_pairs())  # cached: not trained again
    assert trained == [(), refusal_pairs()]


def test_safety_demo_runs_and_reports(tiny_model_dir, tmp_path):
    from selfrl.lab.refusal import DEMO_RUNS, run_safety_demo

    sets = ["max_steps=2", "eval_every=1", "save_every=1", "eval_limit=8", "prompts_per_step=4", "report_to=none"]
    md = run_safety_demo(str(tmp_path / "demo"), sets, progress=False, model=str(tiny_model_dir))
    for name, _, _ in DEMO_RUNS:
        run = tmp_path / "demo" / name
        assert [r["step"] for r in rows(run)] == [0, 1, 2] and f"## {name}:" in md
        assert json.loads((run / "safety_fingerprint.json").read_text())["probe_file"] == str(tmp_path / "demo" / "probes.jsonl")
        cfg = load_config(run / "config.yaml")  # the refusal organism's own task, whatever the demo's default organism
        assert cfg.task in ("arith", "selfrl.lab.refusal:NearTriggerArith", "selfrl.lab.refusal:TriggeredArith")
        assert cfg.max_completion_length == 12
    assert "| srt_near_trigger_rollback | constructed: srt, 1 in 4 prompts with the near-trigger #0, gate_action=rollback |" in md
    assert (tmp_path / "demo" / "safety_report.md").read_text() == md
