"""`selfrl study`: a rows x seeds matrix on the tiny model through the real CLI, its report's numbers recomputed from
the runs' metrics.jsonl, resume after an interruption, a failing run, the collapse-detector table on hand-made
metrics, and one-line errors for bad study files."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from selfrl import detector
from selfrl.errors import ConfigError
from selfrl.logger import read_metrics
from selfrl.lab.report import Outcome, detector_table, plot_study
from selfrl.lab.study import build_runs, default_out, load_study, run_study
from tests.conftest import tiny_sets
from tests.test_cli import run_cli

TASKS = Path(__file__).with_name("gold_tasks.py")


def tiny_base(model_dir: Path) -> dict:
    """tiny_sets' 2-step run as a study's base. LastDigit: the tiny model then scores above zero, so seeds differ.
    Learning rate 1e-3, not tiny_sets' 1e-2: one step at 1e-2 wrecks the tiny model, every seed's final accuracy is
    then 0 and the spread is untested. One torch thread: on a shared 2-core machine, torch's default threads spin
    against each other (~8x slower)."""
    pairs = dict(s.split("=", 1) for s in tiny_sets(model_dir, Path("unused"), task=f"{TASKS}:LastDigit",
                                                     torch_threads=1, eval_limit=64, learning_rate=1e-3))
    del pairs["output_dir"]
    return pairs


def write_study(path: Path, model_dir: Path) -> Path:
    study = {
        "base": tiny_base(model_dir),
        "seeds": [0, 1],
        "quick": {"max_steps": 1},
        "rows": [
            {"name": "srt", "set": {"method": "srt"}},
            {"name": "oracle", "set": {"method": "oracle"}},
            # A task without gold answers: oracle fails in train() before its first step.
            {"name": "broken", "set": {"method": "oracle", "task": f"{TASKS}:NoGold"}, "seeds": [0]},
        ],
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def study(tiny_model_dir, tmp_path_factory):
    """The study run once through the CLI: (process, study dir, study file)."""
    tmp = tmp_path_factory.mktemp("study")
    cfg = write_study(tmp / "study.yaml", tiny_model_dir)
    proc = run_cli("study", str(cfg), "--out", str(tmp / "out"))
    return proc, tmp / "out", cfg


def mtimes(out: Path, runs: list[str]) -> dict:
    return {(r, f): (out / r / f).stat().st_mtime_ns for r in runs for f in ("done.json", "metrics.jsonl")}


def test_study_runs_every_row_and_reports_seed_statistics(study):
    proc, out, _ = study
    for run in ("srt/seed_0", "srt/seed_1", "oracle/seed_0", "oracle/seed_1"):
        assert (out / run / "done.json").is_file(), proc.stderr
        assert [r["step"] for r in read_metrics(out / run)] == [0, 1, 2]
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["row"]: r for r in summary["rows"]}
    assert [r["row"] for r in summary["rows"]] == ["srt", "oracle", "broken"]
    for name in ("srt", "oracle"):
        vals = [[r["val/accuracy"] for r in read_metrics(out / name / f"seed_{s}") if "val/accuracy" in r] for s in (0, 1)]
        finals, starts = [v[-1] for v in vals], [v[0] for v in vals]
        got = rows[name]
        assert (got["done"], got["seeds"], got["n"]) == (2, 2, 2)
        assert got["final"]["mean"] == pytest.approx(statistics.fmean(finals))
        assert got["final"]["std"] == pytest.approx(statistics.stdev(finals))
        assert (got["final"]["min"], got["final"]["max"]) == (min(finals), max(finals))
        assert got["gain"]["mean"] == pytest.approx(statistics.fmean(f - s for f, s in zip(finals, starts)))
        assert got["peak"]["mean"] == pytest.approx(statistics.fmean(max(v) for v in vals))
        times = [statistics.fmean(r["time/step_s"] for r in read_metrics(out / name / f"seed_{s}") if "time/step_s" in r)
                 for s in (0, 1)]
        assert got["step_s"] == pytest.approx(statistics.fmean(times))
        md_final = (f"{statistics.fmean(finals):.3f} ± {statistics.stdev(finals):.3f} "
                    f"[{min(finals):.3f}, {max(finals):.3f}]")
        assert md_final in (out / "report.md").read_text()
    assert any(rows[n]["final"]["std"] > 0 for n in ("srt", "oracle")), "seeds agree everywhere: std is untested"
    assert rows["oracle"]["labels_used"] == "gold answers (reward)" and rows["srt"]["labels_used"] == "none"
    assert (out / "curves.png").stat().st_size > 10_000


def test_failed_run_is_recorded_and_the_others_still_run(study):
    proc, out, _ = study
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"selfrl: error: 1 of 5 runs failed (broken/seed_0); see {out / 'report.md'}")
    error = json.loads((out / "broken" / "seed_0" / "failed.json").read_text())["error"]
    assert "\n" not in error and error
    md = (out / "report.md").read_text()
    assert f"- broken/seed_0: {error}" in md
    assert "| broken | 0 | failed |" in md
    assert (out / "srt" / "seed_1" / "done.json").is_file()  # the run after the failing row's position still ran


def test_interrupted_study_resumes_only_what_is_unfinished(study, tmp_path):
    _, done_out, cfg = study
    out = tmp_path / "out"
    shutil.copytree(done_out, out)
    before = {s: read_metrics(out / "srt" / s) for s in ("seed_1",)}
    # srt/seed_1: killed after its step-1 checkpoint -> resumed; oracle/seed_0: killed before any checkpoint ->
    # deleted and restarted; srt/seed_0: failed mid-training -> kept as failed. oracle/seed_1 is done: untouched.
    (out / "srt" / "seed_1" / "done.json").unlink()
    shutil.rmtree(out / "srt" / "seed_1" / "step_000002")
    (out / "oracle" / "seed_0" / "done.json").unlink()
    for ckpt in (out / "oracle" / "seed_0").glob("step_*"):
        shutil.rmtree(ckpt)
    (out / "srt" / "seed_0" / "done.json").unlink()
    (out / "srt" / "seed_0" / "failed.json").write_text(json.dumps({"error": "step 2: stopped"}))
    untouched = mtimes(out, ["oracle/seed_1"])
    kept = (out / "srt" / "seed_0" / "metrics.jsonl").stat().st_mtime_ns

    with pytest.raises(ConfigError, match="max_steps=2, the study now says 3"):  # edited study: no silent reuse
        run_study(cfg, out, sets=["max_steps=3"])

    # The failed row is fixed in the file: its run (failed before any step) is retried under the new config.
    study = yaml.safe_load(cfg.read_text())
    study["rows"][2]["set"]["task"] = f"{TASKS}:LastDigit"
    cfg = tmp_path / "fixed.yaml"
    cfg.write_text(yaml.safe_dump(study))

    _, outcomes = run_study(cfg, out, report_only=True)
    assert {(o.row, o.seed): o.status for o in outcomes}[("srt", 1)] == "partial"
    assert "| srt | 1 | partial |" in (out / "report.md").read_text()
    assert "| srt | srt | none | 0/2, 1 partial, 1 failed |" in (out / "report.md").read_text()

    _, outcomes = run_study(cfg, out)
    assert {(o.row, o.seed): o.status for o in outcomes} == {
        ("srt", 0): "failed", ("srt", 1): "done", ("oracle", 0): "done", ("oracle", 1): "done", ("broken", 0): "done"}
    assert not (out / "broken" / "seed_0" / "failed.json").exists()
    assert mtimes(out, ["oracle/seed_1"]) == untouched
    assert (out / "srt" / "seed_0" / "metrics.jsonl").stat().st_mtime_ns == kept
    assert "- srt/seed_0: step 2: stopped" in (out / "report.md").read_text()
    assert json.loads((out / "srt" / "seed_1" / "done.json").read_text())["resumed"] is True
    assert json.loads((out / "oracle" / "seed_0" / "done.json").read_text())["resumed"] is False
    resumed = read_metrics(out / "srt" / "seed_1")
    assert [r["step"] for r in resumed] == [0, 1, 2]
    assert resumed[2]["val/accuracy"] == before["seed_1"][2]["val/accuracy"]  # resume replays the same step
    assert [r["step"] for r in read_metrics(out / "oracle" / "seed_0")] == [0, 1, 2]


def test_detector_table_on_hand_made_metrics(monkeypatch):
    # One stand-in signal, so the replayed detector's alarm is set by hand: "x" rising over 0.5 above its first value.
    monkeypatch.setattr(detector, "SIGNALS", [detector.Signal("x", "x", "above_delta", 0.5)])

    def cfg(method):
        return {"method": method, "detector_window": 1, "detector_min_signals": 1}

    def val(*pairs):
        return [{"step": s, "val/accuracy": a} for s, a in pairs]

    def alarm(step):  # a run with the detector on whose replayed alarm comes at `step` (>= 2)
        return [{"step": s, "x": float(s >= step), "detector/alarm": 0} for s in range(1, 5)]

    runs = [
        # Start 0.5: the fall is the first evaluation below 0.5 - 0.05 = 0.45, step 4. Alarm at 3: lead 4 - 3 = +1.
        Outcome("srt", 0, "done", cfg("srt"), val((0, 0.5), (2, 0.6)) + alarm(3) + val((4, 0.44))),
        # 0.40 < 0.45 at step 2: the fall; the alarm at 4 comes after it: lead 2 - 4 = -2.
        Outcome("srt", 1, "done", cfg("srt"), val((0, 0.5), (2, 0.40), (4, 0.3)) + alarm(4)),
        # 0.46 is not more than 0.05 below 0.5: no fall, so its alarm is a false one.
        Outcome("srt", 2, "done", cfg("srt"), val((0, 0.5), (2, 0.46)) + alarm(2)),
        # The detector was off: no alarm, and not watched; still a fall.
        Outcome("srt", 3, "done", cfg("srt"), val((0, 0.5), (2, 0.3))),
        # Oracle rises and alarms anyway: a false alarm both ways.
        Outcome("oracle", 0, "done", cfg("oracle"), val((0, 0.5), (4, 0.9)) + alarm(2)),
        Outcome("mgrpo", 0, "not run", cfg("mgrpo"), []),
    ]
    table = {d["row"]: d for d in detector_table(runs)}
    assert table["srt"] == {"row": "srt", "runs": 4, "watched": 3, "alarmed": 3, "fell": 3, "leads": [1, -2],
                            "mean_lead": -0.5, "oracle_alarms": 0, "alarms_without_fall": 1}
    assert table["oracle"] == {"row": "oracle", "runs": 1, "watched": 1, "alarmed": 1, "fell": 0, "leads": [],
                               "mean_lead": None, "oracle_alarms": 1, "alarms_without_fall": 1}
    assert table["mgrpo"]["runs"] == 0 and table["mgrpo"]["mean_lead"] is None


def test_curves_say_which_panels_no_run_logged(tmp_path):
    """A study without the collapse detector (the demo's) logs no canary: its panel says why instead of staying
    blank, and only that panel."""
    def run(seed, canary):
        rows = [{"step": s, "val/accuracy": 0.5, "val/mean@k": 0.4, "reward/pseudo": 0.5, "policy/entropy": 0.2,
                 "vote/majority_share": 0.6} for s in range(3)]
        return Outcome("srt", seed, "done", {"method": "srt"},
                       rows + ([{"step": 2, "canary/majority_share": 0.7}] if canary else []))

    assert plot_study([run(0, False), run(1, False)], tmp_path / "a.png") == ["canary/majority_share"]
    assert plot_study([run(0, False), run(1, True)], tmp_path / "b.png") == []
    assert (tmp_path / "a.png").stat().st_size > 10_000


BAD = [
    ("rowz: []\n", "unknown key 'rowz' (did you mean 'rows'?)"),
    ("rows:\n  - set: {method: srt}\n", "rows[0]: a row needs a name"),
    ("rows:\n  - name: a/b\n", "a row needs a name usable as a directory name"),
    ("rows:\n  - name: a\n  - name: a\n", "rows[1]: duplicate row name 'a'"),
    ("rows:\n  - name: a\n    set: {methd: srt}\n", "unknown config key 'methd' in {path}: row 'a' set (did you mean 'method'?)"),
    ("base: {seed: 3}\nrows:\n  - name: a\n", "base: 'seed' is set per run by the study"),
    ("seeds: [0, 0]\nrows:\n  - name: a\n", "seeds repeat"),
    ("rows:\n  - name: a\n    set: {num_generations: 1}\n", "row 'a': num_generations: must be at least 2"),
    ("rows:\n  - name: a\n    sets: {}\n", "rows[0]: unknown key 'sets' (did you mean 'set'?)"),
    ("rows: [\n", "is not valid YAML"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_study_files_are_one_line_config_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        build_runs(load_study(path), tmp_path / "out")
    assert message.format(path=path) in str(e.value) and "\n" not in str(e.value)


def test_bad_study_file_through_the_cli(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rows:\n  - name: srt\n    set: {method: srt, learning_rat: 0.1}\n")
    proc = run_cli("study", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"selfrl: error: unknown config key 'learning_rat' in {path}: row 'srt' set "
                                   f"(did you mean 'learning_rate'?)")
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written
    with pytest.raises(ConfigError, match="--only: no row named 'sr'; the rows are srt"):
        path.write_text("rows:\n  - name: srt\n    set: {method: srt}\n")
        run_study(path, tmp_path / "out", only=["sr"])


def test_builtin_quick_study_resolves_by_name_and_validates():
    study = load_study("quick")
    assert study.path.name == "study_quick.yaml"
    runs = build_runs(study, default_out(study, quick=True), quick=True, sets=["device=cpu"])
    assert [(r.row, r.seed) for r in runs] == [(row, s) for row in ("oracle", "srt", "mgrpo") for s in (0, 1)]
    assert runs[0].cfg.max_steps == 4 and runs[0].cfg.device == "cpu"
    assert runs[-1].run_dir == Path("runs/example_study_quick/mgrpo/seed_1")


def test_a_run_another_process_is_training_is_skipped_not_failed(study, tmp_path):
    """Two studies side by side (`--only` halves that overlap): the second finds the run directory locked, leaves
    it alone (no failed.json, nothing deleted, even before the run's first checkpoint) and goes on."""
    from selfrl.lab.study import run_one
    from selfrl.rundir import lock_run_dir, unlock

    _, done_out, cfg = study
    out = tmp_path / "out"
    shutil.copytree(done_out, out)
    run = next(r for r in build_runs(load_study(cfg), out) if (r.row, r.seed) == ("srt", 1))
    (run.run_dir / "done.json").unlink()
    for ckpt in run.run_dir.glob("step_*"):  # "interrupted before its first checkpoint": would be deleted if free
        shutil.rmtree(ckpt)
    before = (run.run_dir / "metrics.jsonl").read_bytes()
    held = lock_run_dir(run.run_dir)  # the other study's training holds it
    try:
        assert run_one(run) == "busy"
    finally:
        unlock(held)
    assert not (run.run_dir / "failed.json").exists()
    assert (run.run_dir / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("name", ["study", "study_tuning", "detector_calibration", "study_more_seeds"])
def test_shipped_study_configs_build_a_valid_run_for_every_row(name):
    """A bad row of a shipped study would fail only when its turn came, hours in."""
    study = load_study(name)
    runs = build_runs(study, default_out(study))
    assert len(runs) >= len(study.rows) and {r.cfg.model for r in runs} == {"organism2"}


@pytest.mark.parametrize("name", ["study_tuning", "detector_calibration", "study_more_seeds"])
def test_tuning_and_calibration_train_only_on_seeds_the_study_does_not_report(name):
    """Issue 14: tune on seeds 100+, report on 0-2."""
    reported = {s for row in load_study("study").rows for s in row.seeds}
    assert reported == {0, 1, 2}
    assert not reported & {s for row in load_study(name).rows for s in row.seeds}


def test_study_rows_of_the_g32_and_collapse_probes():
    rows = _study_cfgs()
    assert rows["mgrpo-g32"].num_generations == 32 and rows["mgrpo-g32"].num_momentum_generations is None
    assert {rows[f"{m}-lr1.5e-4"].learning_rate for m in ("oracle", "srt", "mgrpo", "corewarding")} == {1.5e-4}
    # SRT at G 8, 16 and 32 in the collapse regime, as issue 14 asks
    assert [(rows[r].num_generations, rows[r].learning_rate) for r in ("srt-lr1.5e-4", "srt-g16-lr1.5e-4", "srt-g32-lr1.5e-4")] \
        == [(8, 1.5e-4), (16, 1.5e-4), (32, 1.5e-4)]
    # the cosine rows at G 32: M-GRPO, and SRT and oracle at the same settings
    for r in ("mgrpo-g32-cosine", "srt-g32-cosine", "oracle-g32-cosine"):
        assert (rows[r].num_generations, rows[r].lr_scheduler_type, rows[r].warmup_ratio, rows[r].learning_rate) \
            == (32, "cosine", 0.1, 1e-5)
    # M-GRPO+IQR in the collapse regime with a 24-of-32 anchor that barely moves: M = 8 trained policy rollouts
    big = rows["mgrpo+iqr-g32-n24-m0.9999-lr1.5e-4"]
    assert (big.method, big.iqr_filter, big.learning_rate, big.ema_decay) == ("mgrpo", True, 1.5e-4, 0.9999)
    assert tuple(big.sizes())[1:] == (32, 8, 24)


def test_study_rows_of_the_cosine_collapse_setting():
    # one setting for every part of issue 14's target: cosine with warm-up 0.1 at peak 1.5e-4; SRT at G 8, 16 and 32,
    # oracle for the bar, corewarding to compare, and the 24-of-32 anchor row (M = 8 trained policy rollouts)
    rows = _study_cfgs()
    names = ["mgrpo+iqr-g32-n24-m0.9999", "srt-g32", "srt-g16", "srt", "oracle", "corewarding"]
    cfgs = [rows[f"{n}-cosine1.5e-4"] for n in names]
    settings = {(c.learning_rate, c.lr_scheduler_type, c.warmup_ratio, c.max_steps) for c in cfgs}
    assert settings == {(1.5e-4, "cosine", 0.1, 1000)}
    assert [c.num_generations for c in cfgs] == [32, 32, 16, 8, 8, 8]
    assert [c.method for c in cfgs] == ["mgrpo", "srt", "srt", "srt", "oracle", "corewarding"]
    big = cfgs[0]
    assert (big.iqr_filter, big.ema_decay, tuple(big.sizes())[1:]) == (True, 0.9999, (32, 8, 24))


# the cosine collapse setting's six rows, in study order (the anchor row and the oracle bar first)
SETTING_ROWS = ["mgrpo+iqr-g32-n24-m0.9999", "oracle", "srt-g32", "srt-g16", "srt", "corewarding"]


def _study_cfgs():
    """study.yaml's rows by name -> a run's config (its last seed's; a row's runs differ only in seed and output_dir)."""
    return {r.row: r.cfg for r in build_runs(load_study("study"), Path("runs/study"))}


def _but(cfg, *fields):
    """A run's config less the fields named and output_dir (which differs between any two runs)."""
    return {k: v for k, v in vars(cfg).items() if k not in (*fields, "output_dir")}


def _assert_is_the_tuned_run(cfg, tuned_row, seeds):
    """`cfg` is the very run study_tuning.yaml's row `tuned_row` ran on `seeds`, but for the seed."""
    tuned = [r for r in build_runs(load_study("study_tuning"), Path("runs/t")) if r.row == tuned_row]
    assert {r.seed for r in tuned} == set(seeds)
    assert _but(tuned[0].cfg, "seed") == _but(cfg, "seed")


def _assert_rows_differ_from_their_twins_only_in(suffix, twin_suffix, field, values, extra=()):
    """study.yaml's rows ending in `suffix` are SETTING_ROWS in order, then `extra` (no other row ends in its last
    part), and each SETTING_ROWS one equals its `twin_suffix` row except for `field`, which is (row's, twin's) ==
    `values`."""
    runs = build_runs(load_study("study"), Path("runs/study"))
    rows = {r.row: r.cfg for r in runs}
    tail = "-" + suffix.rsplit("-", 1)[1]
    assert list(dict.fromkeys(r.row for r in runs if r.row.endswith(tail))) \
        == [f"{n}{suffix}" for n in SETTING_ROWS] + list(extra)
    for n in SETTING_ROWS:
        row, twin = rows[f"{n}{suffix}"], rows[f"{n}{twin_suffix}"]
        assert (getattr(row, field), getattr(twin, field)) == values
        assert _but(row, field) == _but(twin, field), n


def test_study_rows_of_the_cosine_collapse_setting_at_1500_steps():
    # each equal to its 1000-step row (tested above) but for its length
    _assert_rows_differ_from_their_twins_only_in("-cosine1.5e-4-1500steps", "-cosine1.5e-4", "max_steps", (1500, 1000))


def test_study_rows_of_the_1500_step_setting_at_16_prompts_per_step():
    """The -p16 rows are the 1500-step rows (tested above) with twice the prompts per step, and nothing else."""
    _assert_rows_differ_from_their_twins_only_in(
        "-cosine1.5e-4-1500steps-p16", "-cosine1.5e-4-1500steps", "prompts_per_step", (16, 8),
        extra=[ANCHOR_128, ANCHOR_128_NO_IQR, ANCHOR_136_NO_IQR])


ANCHOR_128 = "mgrpo+iqr-g128-n120-m0.9999-cosine1.5e-4-1500steps-p16"
ANCHOR_128_NO_IQR = "mgrpo-g128-n120-m0.9999-cosine1.5e-4-1500steps-p16"
ANCHOR_136_NO_IQR = "mgrpo-g136-n120-m0.9999-cosine1.5e-4-1500steps-p16"


def test_study_row_of_the_128_vote_anchor_is_the_p16_anchor_with_more_votes_and_the_tuned_row():
    """The 120-of-128 anchor row is the 24-of-32 -p16 anchor row with 96 more momentum votes (the same 8 trained
    policy rollouts) and nothing else, and the very run study_tuning.yaml tuned on seeds 100-102."""
    study = _study_cfgs()
    row, twin = study[ANCHOR_128], study["mgrpo+iqr-g32-n24-m0.9999-cosine1.5e-4-1500steps-p16"]
    assert tuple(row.sizes())[1:] == (128, 8, 120) and tuple(twin.sizes())[1:] == (32, 8, 24)
    assert _but(row, "num_generations", "num_momentum_generations") \
        == _but(twin, "num_generations", "num_momentum_generations")
    _assert_is_the_tuned_run(row, "mgrpo+iqr-lr1.5e-4-g128-m0.9999-n120-cosine-1500steps-p16", {100, 101, 102})


def test_study_row_of_the_128_vote_anchor_without_iqr_is_that_row_less_the_filter_and_the_tuned_row():
    """The IQR ablation of the 120-of-128 anchor differs from it in iqr_filter alone, and is the very run
    study_tuning.yaml tuned on seeds 100-101."""
    study = _study_cfgs()
    row, twin = study[ANCHOR_128_NO_IQR], study[ANCHOR_128]
    assert (row.iqr_filter, twin.iqr_filter) == (False, True)
    assert _but(row, "iqr_filter") == _but(twin, "iqr_filter")
    _assert_is_the_tuned_run(row, "mgrpo-lr1.5e-4-g128-m0.9999-n120-cosine-1500steps-p16", {100, 101})


def test_study_row_with_16_trained_rollouts_is_the_no_iqr_anchor_with_8_more_policy_rollouts_and_the_tuned_row():
    """The 16-policy-rollout row keeps the same 120 momentum votes and trains twice the policy rollouts; nothing else
    differs from the no-IQR 128-vote row, and it is the very run study_tuning.yaml tuned on seeds 100-101."""
    study = _study_cfgs()
    row, twin = study[ANCHOR_136_NO_IQR], study[ANCHOR_128_NO_IQR]
    assert tuple(row.sizes())[1:] == (136, 16, 120) and tuple(twin.sizes())[1:] == (128, 8, 120)
    assert _but(row, "num_generations") == _but(twin, "num_generations")
    _assert_is_the_tuned_run(row, "mgrpo-lr1.5e-4-g136-m0.9999-n120-cosine-1500steps-p16", {100, 101})


def test_more_seeds_runs_the_studys_own_1500_step_anchor_and_oracle_rows():
    """study_more_seeds adds seeds to two of study.yaml's rows; the same name must mean the same run."""
    study = _study_cfgs()
    more = build_runs(load_study("study_more_seeds"), Path("runs/more"))
    assert {r.seed for r in more} == {3, 4, 5}
    for run in more:
        assert _but(run.cfg, "seed") == _but(study[run.row], "seed"), run.row
