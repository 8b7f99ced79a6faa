"""The study's helper scripts run on a real (tiny) run directory and print what their docs say."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from selfrl.grpo import train
from selfrl.grpo_config import load_config
from tests.conftest import tiny_sets

ROOT = Path(__file__).resolve().parents[1]


def test_iqr_sources_splits_the_filter_drops_by_model(tiny_model_dir, tmp_path):
    run = tmp_path / "mgrpo"
    train(load_config(None, tiny_sets(tiny_model_dir, run, method="mgrpo", iqr_filter="true", num_generations=8,
                                      num_momentum_generations=6, save_total_limit=2)))
    out = subprocess.run([sys.executable, "scripts/iqr_sources.py", str(run), "--steps", "1", "2", "--prompts", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [l for l in out.stdout.splitlines() if l.startswith("step ")]
    assert [l.split(":")[0] for l in lines] == ["step 1", "step 2"]
    for line in lines:  # shares of each model's samples dropped, and mean entropies, from 8 prompts of 2 + 6 samples
        pol, mom, h_pol, h_mom = map(float, re.findall(r"(\d+\.\d+)", line)[:4])
        assert 0 <= pol <= 1 and 0 <= mom <= 1 and h_pol > 0 and h_mom > 0
        assert "(8 prompts, 2 + 6 samples)" in line
    srt = tmp_path / "srt"  # the method is read from config.yaml before any checkpoint, so none is trained
    srt.mkdir()
    load_config(None, tiny_sets(tiny_model_dir, srt, method="srt")).save(srt / "config.yaml")
    out = subprocess.run([sys.executable, "scripts/iqr_sources.py", str(srt), "--steps", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "not mgrpo" in out.stderr
