"""The benchmark's selfrl workers on the tiny model: they run, and what they report is what the run did (TRL is never
needed here; the TRL worker only runs under `make bench`). Each worker runs in its own process, as the benchmark runs
it (bench.__main__.measure): a worker sets torch's thread count and patches the metrics logger for its process, and
neither may leak into the rest of the test session."""
from __future__ import annotations

from bench.__main__ import measure


def test_selfrl_worker_reports_measured_steps(tiny_model_dir):
    r = measure(dict(kind="selfrl", model=str(tiny_model_dir), method="mgrpo", iqr=True, B=2, G=4, T=8, steps=3,
                     warmup=1, beta=0.005, threads=1))
    assert len(r["step_s"]) == 3 and all(t > 0 for t in r["step_s"])
    assert all(1 <= n <= 8 for n in r["response_tokens"])  # mean response length within max_completion_length
    assert r["peak_rss_mib"] > 0


def test_generate_and_ema_workers(tiny_model_dir):
    r = measure(dict(kind="generate", model=str(tiny_model_dir), B=2, G=3, T=8, repeats=2, threads=1))
    assert len(r["selfrl"]) == 2 and len(r["plain"]) == 2 and min(r["selfrl"] + r["plain"]) > 0
    assert len(measure(dict(kind="ema", model=str(tiny_model_dir), repeats=3, threads=1))["ema_s"]) == 3
