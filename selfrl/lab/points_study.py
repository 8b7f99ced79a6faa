"""The GeneralPoints SFT-vs-RL study (issue 16; "SFT memorizes, RL generalizes", arXiv 2501.17161, methods.md §6).

    selfrl points-study [CONFIG.yaml] [--set key=value] [--out DIR] [--report-only]

From one SFT start (the card-game organism, selfrl/points_organism.py), for each of `num_seeds` seeds:
  (b) RL with the environment's reward and revision turns, once per entry of `turns` (max_turns 1, 3, 5);
  (a) more SFT on ID solver answers, for as many tokens processed as the seed's largest RL run used
      (selfrl/points_rl.py counts forward + backward tokens), so the arms meet at matched compute.
Every run is evaluated at `eval_points` marks (greedy episodes on test_id and test_ood: success within 1, 3, 5
attempts) and the shared start once. The report (report.md, curves.png, summary.json) puts the change from the
start beside the paper's (text GeneralPoints, rule OOD: RL +3.5, SFT -8.1 points) and says how many seeds show
RL's OOD change above SFT's. It also reports the rule probe (OOD success with the rule sentence removed, and the
share of identical answers with and without it): a model that ignores the rule scores the same either way, and
then no post-training on the ID rule can be expected to transfer to the OOD one.

Runs are resumable: a run whose summary.json exists is not run again. The study's fields are below; `run` holds
fields of selfrl/points_rl.py's PointsConfig applied to every run (an unknown one is an error naming it).
This file writes its own report rather than selfrl/lab/report.py's: that one plots validation accuracy against
steps, while this study's axis is tokens processed and its rows are ID and OOD success.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from selfrl import config as config_loader
from selfrl.errors import ConfigError
from selfrl.points_rl import TURNS_REPORTED, PointsConfig, evaluate_points, load_start, train_points

PAPER = {"rl": 3.5, "sft": -8.1}  # OOD change in points, GeneralPoints text, rule variation (arXiv 2501.17161 §5.1)


@dataclass
class PointsStudyConfig:
    """SFT vs RL from one card-game start at matched compute."""

    output_dir: str = "runs/points_study"
    """Study directory: start.json, rl_t{T}/seed_{s}/, sft/seed_{s}/, report.md, curves.png, summary.json."""
    num_seeds: int = 3
    """Seeds 0 .. num_seeds-1 of every arm."""
    turns: str = "1,3,5"
    """The RL arms' max_turns, comma-separated."""
    run: dict = field(default_factory=dict)
    """PointsConfig fields for every run (e.g. max_steps, learning_rate, eval_hands, warmup_max_steps)."""

    def validate(self) -> "PointsStudyConfig":
        if self.num_seeds < 1:
            raise ConfigError(f"num_seeds: at least 1, got {self.num_seeds}")
        try:
            turns = [int(t) for t in self.turns.split(",")]
        except ValueError:
            raise ConfigError(f"turns: comma-separated integers, got {self.turns!r}") from None
        if not turns or min(turns) < 1:
            raise ConfigError(f"turns: integers >= 1, got {self.turns!r}")
        self.base()  # names an unknown run field now, not after hours of runs
        return self

    def turn_list(self) -> list[int]:
        return [int(t) for t in self.turns.split(",")]

    def base(self) -> PointsConfig:
        return config_loader.apply_overrides(PointsConfig(), self.run, "run:").validate()


def start_path(base: PointsConfig) -> str:
    """The shared start's directory (the organism is trained and cached on first use)."""
    if base.model_name_or_path != "organism":
        return base.model_name_or_path
    from selfrl.points_organism import PointsOrganismSpec, points_organism_path

    spec = PointsOrganismSpec(sft_max_steps=base.warmup_max_steps, id_share=base.warmup_id_share,
                              target_accuracy=base.warmup_target_accuracy)
    return str(points_organism_path(spec))


def _run(cfg: PointsConfig) -> dict:
    done = Path(cfg.output_dir) / "summary.json"
    return json.loads(done.read_text()) if done.is_file() else train_points(cfg)


def run_points_study(path: str | None, out: str | None, sets: list[str] | None, report_only: bool = False,
                     seed: int | None = None) -> Path:
    """Run (or resume) the study and write its report; `seed` runs that seed's arms only (processes side by side
    each take one seed; run the seed-0 process first, as it evaluates the shared start)."""
    study = config_loader.load(PointsStudyConfig, path, sets)
    root = Path(out or study.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    if not report_only:
        base = dataclasses.replace(study.base(), model_name_or_path=start_path(study.base()), save_model=False,
                                   eval_start=False)
        if not (root / "start.json").is_file():
            from selfrl.tasks.points import PointsTask

            model, tok = load_start(base)
            start = evaluate_points(model, tok, PointsTask(style="compact"), base.eval_hands, base.eval_turns,
                                    base.max_completion_length)
            (root / "start.json").write_text(json.dumps({"start": base.model_name_or_path, **start}, indent=2))
        for seed in range(study.num_seeds) if seed is None else [seed]:
            budgets = []
            for turns in study.turn_list():
                rl = _run(dataclasses.replace(base, method="rl", max_turns=turns, seed=seed,
                                              output_dir=str(root / f"rl_t{turns}" / f"seed_{seed}")))
                budgets.append(rl["evals"][-1]["compute/tokens"])
            _run(dataclasses.replace(base, method="sft", seed=seed, compute_budget=max(budgets),
                                     output_dir=str(root / "sft" / f"seed_{seed}")))
    write_points_report(root, study)
    return root


# ------------------------------------------------------------------------------------------------------ report
def collect(root: Path, study: PointsStudyConfig) -> tuple[dict, dict[str, list[dict]]]:
    """(start evaluation, {arm: [summary of each finished seed]})."""
    if not (root / "start.json").is_file():
        raise ConfigError(f"{root} holds no start.json: run the study before reporting on it")
    start = json.loads((root / "start.json").read_text())
    arms = {f"rl_t{t}": [] for t in study.turn_list()} | {"sft": []}
    for arm, runs in arms.items():
        for seed in range(study.num_seeds):
            f = root / arm / f"seed_{seed}" / "summary.json"
            if f.is_file():
                runs.append(json.loads(f.read_text()))
    return start, arms


def deltas(start: dict, run: dict, key: str) -> float:
    """Change of `key` from the start to the run's last evaluation, in points (percent)."""
    return 100 * (run["evals"][-1][key] - start[key])


def train_curve(run_dir: Path) -> list[float]:
    """The RL run's sampled first-attempt reward at each step (metrics.jsonl)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["reward/first_attempt"] for r in rows if "reward/first_attempt" in r]


def _last(arm_dir: Path, runs: list[dict], key: str) -> str:
    """Mean over seeds of `key` at each run's last step (runs from before the key was logged: '-')."""
    values = []
    for r in runs:
        rows = [json.loads(line) for line in (arm_dir / f"seed_{r['config']['seed']}" / "metrics.jsonl").read_text()
                .splitlines() if line.strip()]
        last = [row[key] for row in rows if key in row]
        if last:
            values.append(last[-1])
    return f"{statistics.mean(values):.2f}" if values else "-"


def reward_delta(start: dict, run: dict, split: str) -> float:
    """Change of the first attempt's mean reward (the dense signal under a success rate stuck at 0)."""
    return run["evals"][-1][f"{split}/reward@1"] - start[f"{split}/reward@1"]


def _mean(xs: list[float], digits: int = 1) -> str:
    if not xs:
        return "-"
    sd = f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else ""
    return f"{statistics.mean(xs):+.{digits}f}{sd}"


def arm_label(arm: str) -> str:
    return "SFT (ID answers)" if arm == "sft" else f"RL, {arm.split('_t')[1]} turn(s)"


def verdict(start: dict, arms: dict[str, list[dict]], study: PointsStudyConfig) -> list[str]:
    """The issue's target, counted: seeds where RL's OOD change beats SFT's, and OOD change by turns."""
    lines = []
    sft = {r["config"]["seed"]: deltas(start, r, "ood/success@1") for r in arms["sft"]}
    for t in study.turn_list():
        rl = {r["config"]["seed"]: deltas(start, r, "ood/success@1") for r in arms[f"rl_t{t}"]}
        both = sorted(set(rl) & set(sft))
        wins = sum(rl[s] > sft[s] for s in both)
        lines.append(f"RL with {t} turn(s): OOD success@1 change above SFT's in {wins}/{len(both)} seeds "
                     f"(ties count as not above).")
    means = [(t, statistics.mean(deltas(start, r, "ood/success@1") for r in arms[f"rl_t{t}"]))
             for t in study.turn_list() if arms[f"rl_t{t}"]]
    if len(means) > 1:
        rising = all(a[1] < b[1] for a, b in zip(means, means[1:]))
        lines.append("More turns give more OOD gain: " + ("yes" if rising else "no") + " (mean OOD change by turns: "
                     + ", ".join(f"{t}: {m:+.1f}" for t, m in means) + " points).")
    return lines


def write_points_report(root: Path, study: PointsStudyConfig) -> None:
    start, arms = collect(root, study)
    lines = [f"# GeneralPoints: SFT vs RL from one start ({root})", "",
             f"Start: `{start['start']}`. Compute is tokens processed (forward + backward, sampling included; "
             "selfrl/points_rl.py). Success is greedy, on the first `eval_hands` hands of test_id and test_ood; "
             "success@k = solved within k attempts with the verifier's feedback between them.", "",
             "| | ID success@1 | OOD success@1 | OOD success@5 | OOD@1 rule removed | OOD answers same without rule |",
             "|---|---|---|---|---|---|",
             f"| start | {100 * start['id/success@1']:.1f} | {100 * start['ood/success@1']:.1f} | "
             f"{100 * start.get('ood/success@5', float('nan')):.1f} | {100 * start['ood_no_rule/success@1']:.1f} | "
             f"{100 * start['ood_no_rule/same_answer']:.1f} |", "",
             "Change from the start (points; mean ± sd over seeds):", "",
             "| arm | seeds | tokens (mean) | ID Δ@1 | OOD Δ@1 | OOD Δ@5 | OOD Δ@1 per seed | paper OOD Δ | "
             "ID reward@1 Δ | OOD reward@1 Δ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, runs in arms.items():
        if not runs:
            continue
        ood = [deltas(start, r, "ood/success@1") for r in runs]
        ood5 = [deltas(start, r, "ood/success@5") for r in runs if "ood/success@5" in r["evals"][-1]]
        tokens = statistics.mean(r["evals"][-1]["compute/tokens"] for r in runs)
        paper = PAPER["sft"] if arm == "sft" else PAPER["rl"] if arm == "rl_t5" else None
        lines.append(f"| {arm_label(arm)} | {len(runs)} | {tokens:,.0f} | "
                     f"{_mean([deltas(start, r, 'id/success@1') for r in runs])} | {_mean(ood)} | {_mean(ood5)} | "
                     f"{', '.join(f'{d:+.1f}' for d in ood)} | {'-' if paper is None else f'{paper:+.1f}'} | "
                     f"{_mean([reward_delta(start, r, 'id') for r in runs], 2)} | "
                     f"{_mean([reward_delta(start, r, 'ood') for r in runs], 2)} |")
    lines += ["", "Rule probe at each run's end (mean over seeds): OOD success@1 with the rule sentence / without it; "
              "share of OOD first answers identical with and without it.", ""]
    for arm, runs in arms.items():
        if runs:
            ends = [r["evals"][-1] for r in runs]
            lines.append(f"- {arm_label(arm)}: {100 * statistics.mean(e['ood/success@1'] for e in ends):.1f} / "
                         f"{100 * statistics.mean(e['ood_no_rule/success@1'] for e in ends):.1f}; same answer "
                         f"{100 * statistics.mean(e['ood_no_rule/same_answer'] for e in ends):.1f}%")
    lines += ["", "Which rule the OOD first answers' numbers follow (mean over seeds): the stated one "
              "(J, Q, K = 11, 12, 13) / the ID one (J, Q, K = 10).", "",
              f"- start: {100 * start['ood/numbers_stated_rule']:.1f}% / {100 * start['ood/numbers_id_rule']:.1f}%"]
    for arm, runs in arms.items():
        if runs:
            ends = [r["evals"][-1] for r in runs]
            lines.append(f"- {arm_label(arm)}: {100 * statistics.mean(e['ood/numbers_stated_rule'] for e in ends):.1f}%"
                         f" / {100 * statistics.mean(e['ood/numbers_id_rule'] for e in ends):.1f}%")
    lines += ["", "Training first-attempt reward (sampled) at the first and the last RL step, mean over seeds; a group "
              "whose episodes all earn the same reward has zero advantages and teaches nothing:", ""]
    for arm, runs in arms.items():
        if runs and arm != "sft":
            curves = [train_curve(root / arm / f"seed_{r['config']['seed']}") for r in runs]
            lines.append(f"- {arm_label(arm)}: {statistics.mean(c[0] for c in curves):+.2f} -> "
                         f"{statistics.mean(c[-1] for c in curves):+.2f}; episode reward sd within groups at the last "
                         f"step: {_last(root / arm, runs, 'reward/group_std')}")
    lines += ["", f"First-attempt mean reward at the start: ID {start['id/reward@1']:+.2f}, "
              f"OOD {start['ood/reward@1']:+.2f}."]
    if "ood/no_formula@1" in start:
        lines += ["", f"First answers without a readable formula at the start (the format broken): ID "
                  f"{100 * start['id/no_formula@1']:.1f}%, OOD {100 * start['ood/no_formula@1']:.1f}%."]
    lines += ["", "## Verdict (counted from the runs above)", ""] + [f"- {v}" for v in verdict(start, arms, study)]
    lines += ["", "![curves](curves.png)", ""]
    plot_curves(start, arms, root / "curves.png")
    summary = {"start": start, "arms": {a: [r["evals"] for r in runs] for a, runs in arms.items()},
               "verdict": verdict(start, arms, study)}
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    (root / "report.md").write_text("\n".join(lines))


def plot_curves(start: dict, arms: dict[str, list[dict]], png: Path) -> None:
    """ID and OOD success@1, OOD success@5 and the first attempt's mean reward against tokens processed; mean over
    seeds at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["id/success@1", "ood/success@1", f"ood/success@{max(TURNS_REPORTED)}", "id/reward@1", "ood/reward@1"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.6))
    for ax, key in zip(axes, keys):
        for arm, runs in arms.items():
            if not runs or key not in start:
                continue
            n = min(len(r["evals"]) for r in runs)
            xs = [0] + [statistics.mean(r["evals"][i]["compute/tokens"] for r in runs) for i in range(n)]
            scale = 100 if "success" in key else 1
            ys = [scale * start[key]] + [scale * statistics.mean(r["evals"][i][key] for r in runs) for i in range(n)]
            ax.plot(xs, ys, marker="o", label=arm_label(arm), linestyle="--" if arm == "sft" else "-")
        ax.set_title(key)
        ax.set_xlabel("tokens processed (forward + backward)")
        ax.set_ylabel("success (%)" if "success" in key else "mean first-attempt reward")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
