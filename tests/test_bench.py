"""The benchmark's selfrl worker on the tiny model: it runs, and what it reports is what the run did (TRL is never
needed here; the TRL worker only runs under `make bench`)."""
from __future__ import annotations

from bench.worker import run_ema, run_generate, run_selfrl


def test_selfrl_worker_reports_measured_steps(tiny_model_dir):
    r = run_selfrl(dict(model=str(tiny_model_dir), method="mgrpo", iqr=True, B=2, G=4, T=8, steps=3, warmup=1,
                        beta=0.005, threads=1))
    assert len(r["step_s"]) == 3 and all(t > 0 for t in r["step_s"])
    assert all(1 <= n <= 8 for n in r["response_tokens"])  # mean response length within max_completion_length


def test_generate_and_ema_workers(tiny_model_dir):
    r = run_generate(dict(model=str(tiny_model_dir), B=2, G=3, T=8, repeats=2, threads=1))
    assert len(r["selfrl"]) == 2 and len(r["plain"]) == 2 and min(r["selfrl"] + r["plain"]) > 0
    assert len(run_ema(dict(model=str(tiny_model_dir), repeats=3, threads=1))["ema_s"]) == 3
