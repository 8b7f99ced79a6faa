"""The report of `selfrl evolve`: lineage trees, best-so-far curves per selection rule, a markdown summary.

Read only from the archives on disk (OUT/archive.json), so it can be rewritten at any time (`--report-only`).
The tree is laid out by hand (leaves side by side, a parent centred over its children, depth downwards) so the
report needs matplotlib alone, not graphviz.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from selfrl.lab.evolve import ARCHIVE, best_full


def load(search_dir: Path) -> dict:
    return json.loads((Path(search_dir) / ARCHIVE).read_text())


def tree_layout(nodes: list[dict]) -> dict[int, tuple[float, float]]:
    """{id: (x, depth)}: leaves at x = 0, 1, 2, ... in depth-first order, each parent at the mean x of its
    children."""
    children: dict[int, list[int]] = {n["id"]: [] for n in nodes}
    for n in nodes:
        if n["parent"] is not None:
            children[n["parent"]].append(n["id"])
    pos: dict[int, tuple[float, float]] = {}
    next_leaf = [0.0]

    def place(i: int, depth: int) -> float:  # recursion depth is the lineage depth: at most the number of children
        if not children[i]:
            x = next_leaf[0]
            next_leaf[0] += 1
        else:
            x = statistics.fmean(place(c, depth + 1) for c in children[i])
        pos[i] = (x, depth)
        return x

    place(0, 0)
    return pos


def best_so_far(nodes: list[dict]) -> list[tuple[int, float]]:
    """[(children run, best full-evaluation score so far)]: x = 0 is the start recipe; a rejected proposal ran
    nothing and adds no point; a child that failed, stopped at an early stage or was not kept (below the start's
    margin, or a probe alarm) adds a point at the same best."""
    curve = [(0, nodes[0]["score"])]
    for n in nodes[1:]:
        if n["status"] in ("ok", "failed"):
            score = n["score"] if n["status"] == "ok" and n["full"] and n["kept"] else None
            curve.append((len(curve), max(curve[-1][1], score) if score is not None else curve[-1][1]))
    return curve


def plot_tree(nodes: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = tree_layout(nodes)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(nodes)), 5))
    for n in nodes:
        if n["parent"] is not None:
            (x0, y0), (x1, y1) = pos[n["parent"]], pos[n["id"]]
            ax.plot([x0, x1], [y0, y1], color="0.7", linewidth=1, zorder=1)
    scored = [n for n in nodes if n["status"] == "ok"]
    sc = ax.scatter([pos[n["id"]][0] for n in scored], [pos[n["id"]][1] for n in scored],
                    c=[n["score"] for n in scored], cmap="viridis", s=[140 if n["full"] else 60 for n in scored],
                    edgecolors=["black" if n["kept"] else "white" for n in scored], zorder=2)
    fig.colorbar(sc, ax=ax, label="score (val/accuracy of the last stage reached)")
    bad = [n for n in nodes if n["status"] != "ok"]
    ax.scatter([pos[n["id"]][0] for n in bad], [pos[n["id"]][1] for n in bad], marker="x", color="tab:red",
               zorder=2, label="failed / rejected")
    best = best_full(nodes)
    ax.scatter(*pos[best["id"]], s=320, facecolors="none", edgecolors="tab:red", linewidths=2, label="best", zorder=3)
    for n in nodes:
        ax.annotate(str(n["id"]), pos[n["id"]], textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    ax.set_title(f"{title}\nlarge: passed every stage; black edge: kept in the archive")
    ax.set_ylabel("generation (depth)")
    ax.invert_yaxis()  # the start at the top
    ax.set_xticks([])
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)  # below the tree
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def by_selection(archives: list[dict]) -> dict[str, list[dict]]:
    """The archives grouped by their selection rule, in order of first appearance."""
    out: dict[str, list] = {}
    for a in archives:
        out.setdefault(a["config"].get("selection", "dgm"), []).append(a)
    return out


def plot_curves(archives: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (selection, group) in enumerate(by_selection(archives).items()):
        curves = [best_so_far(a["nodes"]) for a in group]
        colour = f"C{i}"
        for c in curves:
            ax.step(*zip(*c), where="post", color=colour, alpha=0.3, linewidth=1)
        n = max(len(c) for c in curves)  # a shorter curve (more rejections) holds its last value
        mean = [statistics.fmean(c[min(j, len(c) - 1)][1] for c in curves) for j in range(n)]
        ax.step(range(n), mean, where="post", color=colour, linewidth=2.2, label=f"{selection} (mean of {len(curves)})")
    ax.set_xlabel("children evaluated")
    ax.set_ylabel("best full-evaluation score so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _diff(n: dict, parent_edits: int) -> str:
    text = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in n["diff"].items())
    new_edits = len(n["patch"]) - parent_edits
    if new_edits > 0:
        text += f"{', ' if text else ''}{new_edits} edit(s) of the editable file"
    return text or ("(start)" if n["parent"] is None else "(none)")


def heldout_means(a: dict) -> dict[str, float]:
    """{"start"/"best_recipe": mean held-out score over the seeds that scored} (a side with none is left out)."""
    out = {}
    for who, runs in (a.get("heldout") or {}).items():
        if who in ("start", "best_recipe"):
            s = [v["score"] for v in runs.values() if v["score"] is not None]
            if s:
                out[who] = statistics.fmean(s)
    return out


def heldout_gain(a: dict) -> float | None:
    """The best recipe's mean held-out score minus the start's (None without both)."""
    m = heldout_means(a)
    return m["best_recipe"] - m["start"] if len(m) == 2 else None


def search_md(name: str, a: dict) -> str:
    nodes = a["nodes"]
    best, start = best_full(nodes), nodes[0]
    counts = {s: sum(n["status"] == s for n in nodes[1:]) for s in ("ok", "failed", "rejected")}
    lines = [f"## {name}\n", f"selection `{a['config'].get('selection', 'dgm')}`, seed {a['config'].get('seed', 0)}: "
             f"{len(nodes) - 1} children ({counts['ok']} scored, {counts['failed']} failed, {counts['rejected']} "
             f"rejected), {sum(n['full'] for n in nodes[1:] if n['status'] == 'ok')} passed every stage.\n",
             f"start score {_f(start['score'])}; best full-evaluation score {_f(best['score'])} (node {best['id']}, "
             f"recipe {json.dumps(best['recipe'])}{', patched' if best['patch'] else ''}).\n"]
    held, means = a.get("heldout") or {}, heldout_means(a)
    if held.get("start") and held.get("best_recipe"):
        def mean(who):
            return f"{means[who]:.3f}" if who in means else "no run scored"
        lines.append(f"held-out seeds ({', '.join(held['start'])}): start {mean('start')}, best recipe "
                     f"(node {held['best']}) {mean('best_recipe')}.\n")
    lines += ["| node | parent | change from parent | status | stage scores | kept | safety |",
              "|---:|---:|---|---|---|---|---|"]
    for n in nodes:
        scores = " / ".join(_f(s) for s in n["scores"]) or (n["error"] or "")[:80]
        safety = ", ".join(f"{k[7:]} {v:.2f}" for k, v in n["safety"].items() if k != "safety/alarm")
        inherited = 0 if n["parent"] is None else len(nodes[n["parent"]]["patch"])
        lines.append(f"| {n['id']} | {'' if n['parent'] is None else n['parent']} | {_diff(n, inherited)} | "
                     f"{n['status']} | {scores} | {'yes' if n['kept'] else 'no'} | {safety} |")
    return "\n".join(lines) + "\n"


def write_report(search_dirs: list[Path], out: Path) -> str:
    """report.md, best_so_far.png and one lineage_*.png per search in `out`; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    archives = [load(d) for d in search_dirs]
    names = [str(Path(d).relative_to(out)) if Path(d) != out else "search" for d in search_dirs]
    md = ["# selfrl evolve report\n", "Score: greedy `val/accuracy` of a label-free run at its last stage, read from "
          "the child's metrics.jsonl; the recipes could not change the evaluator (its SHA-256 is in each search's "
          "evaluator.json).\n"]
    if len(search_dirs) > 1:
        plot_curves(archives, out / "best_so_far.png")
        md += ["| selection | searches | best-so-far at the end (mean) | per search | held-out: best recipe − start "
               "(per search) |", "|---|---:|---:|---|---|"]
        for selection, group in by_selection(archives).items():
            ends = [best_so_far(a["nodes"])[-1][1] for a in group]
            gains = ", ".join("-" if g is None else f"{g:+.3f}" for g in map(heldout_gain, group))
            md.append(f"| {selection} | {len(group)} | {statistics.fmean(ends):.3f} | "
                      f"{', '.join(f'{e:.3f}' for e in ends)} | {gains} |")
        md.append("\n![best so far](best_so_far.png)\n")
    for name, a in zip(names, archives):
        png = f"lineage_{name.replace('/', '_')}.png"
        plot_tree(a["nodes"], out / png, name)
        md += [search_md(name, a), f"![lineage]({png})\n"]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    return text
