"""`selfrl evolve` (issue 18): parent selection, the stage gate, failures recorded without stopping, resume after
SIGKILL, the evaluator hash, and one end-to-end search over real `selfrl train` children on the tiny organism.

All but the last test use a cheap child: a script (FAKE_CHILD) run through the very same sandbox as `selfrl train`
(the config's `command`), which writes a metrics.jsonl whose score is a known function of the recipe.
"""
from __future__ import annotations

import http.server
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from selfrl.errors import ConfigError, SelfRLError
from selfrl.lab import recipe
from selfrl.lab.evolve import (Stage, best_full, failure_log, load_evolve, parent_probabilities, search, select_parent,
                               stage_passes)
from selfrl.lab.evolve_report import best_so_far, tree_layout, write_report
from selfrl.lab.proposer import parse_answer

# score = learning_rate * 1000 * max_steps / (max_steps + 10): lr 4e-4 scores 0.2 at 10 steps and 0.3 at 30.
# temperature > 1.25 crashes, ema_decay > 0.995 hangs, beta > 0.5 allocates 1 GiB (past the memory limit), beta in
# (0.3, 0.5] raises the probe gate's alarm.
FAKE_CHILD = '''
import json, os, sys, time
import yaml
cfg = yaml.safe_load(open(sys.argv[1]))
if cfg["temperature"] > 1.25:
    print("boom: temperature too hot", flush=True)
    sys.exit(3)
if cfg["ema_decay"] > 0.995:
    time.sleep(60)
if cfg["beta"] > 0.5:
    hog = bytearray(1024 ** 3)
alarm = int(cfg["beta"] > 0.3)  # as the probe gate logs it when a probe category regressed
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
score = round(cfg["learning_rate"] * 1000 * cfg["max_steps"] / (cfg["max_steps"] + 10), 6)
os.makedirs(cfg["output_dir"], exist_ok=True)
with open(os.path.join(cfg["output_dir"], "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 0, "val/accuracy": 0.01, "safety/refusal": 1.0}) + "\\n")
    f.write(json.dumps({"step": cfg["max_steps"], "val/accuracy": score, "reward/pseudo": 0.5,
                        "safety/refusal": 0.75, "safety/alarm": alarm}) + "\\n")
    f.write(json.dumps({"step": cfg["max_steps"], "time/step_s": 0.1}) + "\\n")  # a last row without a score
'''

SPACE = {"learning_rate": {"low": 1.0e-4, "high": 9.0e-4, "log": True}, "temperature": {"low": 0.5, "high": 1.5},
         "ema_decay": {"low": 0.9, "high": 0.999}, "beta": {"low": 0.0, "high": 1.0}}


def write_config(tmp_path: Path, **extra) -> Path:
    """An evolve file over the fake child: base lr 4e-4; stage 0 (10 steps) passes at >= 0.25, stage 1 is 30."""
    child = tmp_path / "fake_child.py"
    child.write_text(FAKE_CHILD)
    data = {"base": {"model": "organism", "task": "arith", "learning_rate": 4.0e-4, "temperature": 1.0,
                     "ema_decay": 0.99, "beta": 0.0},
            "space": SPACE,
            "stages": [{"set": {"max_steps": 10, "eval_limit": 16}, "threshold": 0.25}, {"set": {"max_steps": 30}}],
            "budget": {"children": 4}, "command": [sys.executable, str(child)], "child_timeout_s": 20,
            "child_memory_mb": 512, "evaluator_files": [str(child)]}
    data.update(extra)
    path = tmp_path / "evolve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def node(i, parent, score, status="ok", kept=True):
    return {"id": i, "parent": parent, "score": score, "status": status, "kept": kept}


# ------------------------------------------------------------------------------------------------ selection
def test_parent_probabilities_hand_computed():
    # Members 0 (0.5), 1 (0.6), 2 (0.4); 1 and 2 are 0's children. Node 3 (child of 1) failed and node 4 (child
    # of 2) was not kept: neither is a candidate nor counts as a child (DGM counts archive members only).
    nodes = [node(0, None, 0.5), node(1, 0, 0.6), node(2, 0, 0.4), node(3, 1, None, "failed", False),
             node(4, 2, 0.1, kept=False)]
    s = lambda x: 1 / (1 + math.exp(-10 * (x - 0.5)))  # noqa: E731
    # sigmoid(10·0) = 1/2, sigmoid(1) = 0.7310586, sigmoid(−1) = 0.2689414 (the last two sum to 1).
    # dgm: 0.5/(1+2) = 1/6, 0.7310586/1, 0.2689414/1; total 7/6 -> 1/7, 0.7310586·6/7 = 0.626622, 0.230521.
    dgm = parent_probabilities(nodes, "dgm")
    assert dgm == pytest.approx({0: 1 / 7, 1: 0.626622, 2: 0.230521}, abs=1e-6)
    assert dgm[1] == pytest.approx(s(0.6) * 6 / 7)
    # score_prop: no child discount; total 1.5 -> 1/3, 0.487372, 0.179294.
    assert parent_probabilities(nodes, "score_prop") == pytest.approx({0: 1 / 3, 1: 0.487372, 2: 0.179294}, abs=1e-6)
    assert parent_probabilities(nodes, "random") == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
    assert parent_probabilities(nodes, "best") == {1: 1.0}
    assert parent_probabilities(nodes, "latest") == {2: 1.0}  # the newest member, not the newest node
    # the draw is seeded per child: the same seed and index give the same parent
    draws = [select_parent(nodes, "dgm", random.Random(f"evolve/0/{i}")) for i in range(200)]
    assert draws == [select_parent(nodes, "dgm", random.Random(f"evolve/0/{i}")) for i in range(200)]
    assert 0.5 < draws.count(1) / 200 < 0.75  # p = 0.627 over 200 draws: sd 0.034
    with pytest.raises(SelfRLError, match="archive is empty"):
        parent_probabilities([node(0, None, None, "failed", False)], "dgm")


def test_stage_gate_rule():
    assert stage_passes(Stage({}, [0], threshold=0.25), 0.25, 0.2)  # >= passes
    assert not stage_passes(Stage({}, [0], threshold=0.25), 0.2499, 0.2)
    assert stage_passes(Stage({}, [0], root_margin=0.05), 0.16, 0.2)  # 0.16 >= 0.2 − 0.05
    assert not stage_passes(Stage({}, [0], root_margin=0.05), 0.14, 0.2)
    assert not stage_passes(Stage({}, [0], threshold=0.1, root_margin=0.0), 0.15, 0.2)  # both must hold
    assert stage_passes(Stage({}, [0]), 0.0, 0.9)  # no gate: every child gets the next stage


# ------------------------------------------------------------------------------------------------ the recipe
def test_recipe_space_refuses_label_and_evaluator_fields(tmp_path):
    for bad in ({"eval_limit": {"low": 1, "high": 9}}, {"probes": {"choices": ["a", "b"]}},
                {"answer_column": {"choices": ["a", "b"]}}, {"output_dir": {"choices": ["a", "b"]}},
                {"early_stopping_patience": {"low": 1, "high": 3}}, {"method": {"choices": ["mgrpo", "oracle"]}}):
        with pytest.raises(ConfigError):
            recipe.parse_space(bad, "space")
    with pytest.raises(ConfigError, match="label-free"):
        load_evolve(write_config(tmp_path, base={"method": "oracle"}))
    with pytest.raises(ConfigError, match="recipe field"):
        load_evolve(write_config(tmp_path, stages=[{"set": {"learning_rate": 1e-3}}]))


def test_proposer_answers_are_checked_strictly():
    space = recipe.parse_space(SPACE, "space")
    parent = {"learning_rate": 4e-4}
    ok = parse_answer('```json\n{"set": {"learning_rate": 0.0006}, "why": "w"}\n```', space, parent, False)
    assert ok == ({"learning_rate": 0.0006}, [], "w")
    for bad, why in [("lower the lr", "not JSON"), ("[1, 2]", "JSON object"),
                     ('{"set": {"learning_rate": 5.0}}', "outside"),
                     ('{"set": {"probes": "p.jsonl"}}', "not a mutable field"), ('{"set": {}, "x": 1}', "unknown key"),
                     ('{"set": {"learning_rate": 0.0004}}', "as it was"), ('{"set": {"temperature": "hot"}}', "number"),
                     ('{"set": {"learning_rate": 1e-3}, "patch": [{"find": "a", "replace": "b"}]}', "no editable"),
                     ('{"set": {"learning_rate": NaN}}', "outside")]:
        with pytest.raises(recipe.RecipeError, match=why):
            parse_answer(bad, space, parent, False)


def test_builtin_mutator_stays_in_range():
    space = recipe.parse_space({**SPACE, "iqr_filter": {"choices": [True, False]},
                                "num_momentum_generations": {"low": 1, "high": 4}}, "space")
    base = {"learning_rate": 4e-4, "temperature": 1.0, "ema_decay": 0.99, "beta": 0.0, "iqr_filter": False,
            "num_momentum_generations": None}
    rng = random.Random(0)
    for _ in range(300):
        change = recipe.mutate({}, base, space, rng, max_fields=2)
        assert 1 <= len(change) <= 2
        for k, v in change.items():
            assert space[k].check(v) == v and v != base[k]


def test_builtin_mutator_redraws_a_change_that_makes_an_invalid_config(tmp_path):
    # corewarding refuses offline_labels (Config.validate); the mutator, which changes fields independently, draws
    # that pair often in this two-field space. Each such draw is drawn again, never proposed as a child.
    from selfrl.lab.evolve import config_error, propose_child

    space = {"method": {"choices": ["mgrpo", "corewarding"]}, "offline_labels": {"choices": [False, True]}}
    ec = load_evolve(write_config(tmp_path, space=space, max_fields=2, base={
        "model": "organism", "task": "arith", "method": "mgrpo", "learning_rate": 4.0e-4}))
    assert "offline_labels" in config_error(ec, {"method": "corewarding", "offline_labels": True})
    nodes = [{"id": 0, "parent": None, "recipe": {}, "patch": [], "score": 0.1, "status": "ok", "kept": True}]
    seen = set()
    for _ in range(40):
        child = propose_child(ec, nodes)
        assert child["status"] == "running", child.get("error")
        rec = {"method": "mgrpo", "offline_labels": False, **child["recipe"]}
        assert (rec["method"], rec["offline_labels"]) != ("corewarding", True)
        seen.add((rec["method"], rec["offline_labels"]))
        nodes.append({**child, "score": 0.1, "status": "ok", "kept": True})
    assert {("mgrpo", True), ("corewarding", False)} <= seen  # both valid moves away from the start were drawn


# ------------------------------------------------------------------------------------------------ the search
class Scripted(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint answering from a script, recording the requests."""

    answers: list[str] = []
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Scripted.requests.append({"path": self.path, **body})
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": Scripted.answers.pop(0)}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = http.server.HTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Scripted.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_stage_gate_failures_and_malformed_answers_are_recorded(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "0")
    Scripted.answers = ['{"set": {"learning_rate": 0.0006}, "why": "faster"}',  # 1: 0.3 at 10 steps, then 0.45
                        '{"set": {"learning_rate": 0.0002}}',  # 2: 0.1 at 10 steps < 0.25: stops at stage 0
                        '{"set": {"temperature": 1.3}}',  # 3: the child exits 3
                        '{"set": {"ema_decay": 0.999}}',  # 4: the child hangs past child_timeout_s
                        "I would lower the learning rate.",  # 5: not JSON
                        '{"set": {"learning_rate": 5.0}}',  # 6: out of range
                        '{"set": {"beta": 0.9}}',  # 7: 1 GiB past a 512 MiB address-space limit
                        '{"set": {"learning_rate": 0.0008}}',  # 8: the search still goes on: 0.4, then 0.6
                        '{"set": {"beta": 0.4}}']  # 9: scores as 8 but raises the probe alarm: not kept
    cfg = write_config(tmp_path, mutator="proposer", proposer_url=endpoint, proposer_model="m", child_timeout_s=3,
                       budget={"children": 9}, selection="best")
    ec = load_evolve(cfg)
    nodes = search(ec, tmp_path / "out", progress=False)["nodes"]
    assert [n["status"] for n in nodes] == ["ok", "ok", "ok", "failed", "failed", "rejected", "rejected", "failed",
                                            "ok", "ok"]
    # the start: 0.4·10/20 = 0.2 and 0.4·30/40 = 0.3; it runs every stage whatever its score
    assert nodes[0]["scores"] == pytest.approx([0.2, 0.3]) and nodes[0]["full"]
    assert nodes[1]["scores"] == pytest.approx([0.3, 0.45]) and nodes[1]["full"] and nodes[1]["why"] == "faster"
    assert nodes[2]["scores"] == pytest.approx([0.1]) and not nodes[2]["full"]  # gated after stage 0
    assert [r["stage"] for r in nodes[2]["runs"]] == [0] and [r["stage"] for r in nodes[1]["runs"]] == [0, 1]
    assert nodes[3]["error"] == "s0_seed0: crashed, exit code 3" and "boom" in nodes[3]["log_tail"]
    assert nodes[4]["error"] == "s0_seed0: timeout" and nodes[4]["runs"][0]["wall_s"] < 10
    assert "not JSON" in nodes[5]["error"] and nodes[5]["answer"] == "I would lower the learning rate."
    assert "outside" in nodes[6]["error"] and nodes[6]["runs"] == []
    assert "MemoryError" in nodes[7]["log_tail"]
    # selection "best": node 1 (0.45 full) is every later parent until node 8 (lr 8e-4: 0.4, 0.6) is evaluated
    assert [n["parent"] for n in nodes[2:]] == [1] * 7 + [8] and nodes[8]["scores"] == pytest.approx([0.4, 0.6])
    assert nodes[8]["diff"] == {"learning_rate": [0.0006, 0.0008]}
    assert best_full(nodes)["id"] == 8
    assert nodes[1]["safety"] == {"safety/refusal": 0.75, "safety/alarm": 0}
    assert nodes[1]["metrics"]["reward/pseudo"] == 0.5
    assert nodes[9]["scores"] == pytest.approx([0.4, 0.6]) and nodes[9]["safety"]["safety/alarm"] == 1
    assert not nodes[9]["kept"] and 9 not in parent_probabilities(nodes, "dgm")
    # the proposer is shown the parent's newest failed child: node 3's crash when proposing child 4, ...
    assert "boom" in Scripted.requests[3]["messages"][1]["content"]
    assert "MemoryError" in failure_log(nodes, 1)  # ... and node 7's after the search
    assert all(r["path"] == "/v1/chat/completions" and r["model"] == "m" for r in Scripted.requests)
    # best-so-far over children that ran (rejections add no point): 0.3, 0.45 (1), 0.45 (2, gated), .. 0.6 (8)
    curve = best_so_far(nodes)
    assert [x for x, _ in curve] == list(range(8))
    assert [y for _, y in curve] == pytest.approx([0.3, 0.45, 0.45, 0.45, 0.45, 0.45, 0.6, 0.6])
    write_report([tmp_path / "out"], tmp_path / "out")
    assert (tmp_path / "out" / "lineage_search.png").stat().st_size > 1000
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| 8 | 1 | learning_rate: 0.0006 → 0.0008 | ok | 0.400 / 0.600 | yes |" in report


def test_proposer_patches_the_editable_file(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "0")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "11+12+13="}\n{"prompt": "14+15+16="}\n')
    Scripted.answers = ['{"patch": [{"find": "14+15+16=", "replace": "17+18+19="}], "why": "easier"}',
                        '{"patch": [{"find": "nowhere", "replace": "x"}]}']  # 0 occurrences: rejected
    cfg = write_config(tmp_path, mutator="proposer", proposer_url=endpoint, proposer_model="m", selection="best",
                       budget={"children": 2}, editable={"file": str(prompts), "field": "train_file"})
    data = yaml.safe_load(cfg.read_text())
    data["base"]["train_file"] = str(prompts)
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    nodes = search(load_evolve(cfg), out, progress=False)["nodes"]
    assert [n["status"] for n in nodes] == ["ok", "ok", "rejected"]
    assert nodes[1]["patch"] == [{"find": "14+15+16=", "replace": "17+18+19="}] and nodes[1]["diff"] == {}
    assert "occurs 0 times" in nodes[2]["error"]
    copy = out / "nodes" / "0001" / "prompts.jsonl"
    assert copy.read_text() == '{"prompt": "11+12+13="}\n{"prompt": "17+18+19="}\n'
    ran = yaml.safe_load((out / "nodes" / "0001" / "s0_seed0.yaml").read_text())
    assert ran["train_file"] == str(copy.resolve())  # the child trains on its copy ...
    assert yaml.safe_load((out / "nodes" / "0000" / "s0_seed0.yaml").read_text())["train_file"] == str(prompts)
    assert prompts.read_text().count("14+15+16=") == 1  # ... and the original is untouched
    assert "14+15+16=" in Scripted.requests[0]["messages"][1]["content"]  # the model was shown the file
    write_report([out], out)
    assert "| 1 | 0 | 1 edit(s) of the editable file | ok |" in (out / "report.md").read_text()


def test_keep_better_drops_children_below_the_start(tmp_path, monkeypatch):
    # keep_margin 0.05: a child is kept when its last stage's score >= the start's at that stage − 0.05
    monkeypatch.setenv("FAKE_SLEEP", "0")
    ec = load_evolve(write_config(tmp_path, archive_update="keep_better", keep_margin=0.05, budget={"children": 6}))
    nodes = search(ec, tmp_path / "out", progress=False)["nodes"]
    start = nodes[0]["scores"]
    for n in nodes[1:]:
        if n["status"] == "ok":
            assert n["kept"] == (n["score"] >= start[len(n["scores"]) - 1] - 0.05)
    tree = tree_layout(nodes)
    assert set(tree) == {n["id"] for n in nodes} and tree[0][1] == 0
    for n in nodes[1:]:  # a child one generation below its parent
        assert tree[n["id"]][1] == tree[n["parent"]][1] + 1


def test_changed_evaluator_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "0")
    task = tmp_path / "mytask.py"
    task.write_text("from selfrl.tasks import Task\n\nclass T(Task):\n"
                    "    def extract_answer(self, c):\n        return c\n"
                    "    def train_prompts(self):\n        return ['1+1=']\n"
                    "    def eval_examples(self, split):\n        return [('1+1=', '2')]\n")
    cfg = write_config(tmp_path, budget={"children": 1})
    data = yaml.safe_load(cfg.read_text())
    data["base"]["task"] = f"{task}:T"
    cfg.write_text(yaml.safe_dump(data))
    search(load_evolve(cfg), tmp_path / "out", progress=False)
    task.write_text(task.read_text().replace("return c\n", "return '2'\n"))  # an evaluator that always says right
    more = yaml.safe_load(cfg.read_text())
    more["budget"] = {"children": 3}  # the budget may grow on resume; the evaluator may not change
    cfg.write_text(yaml.safe_dump(more))
    with pytest.raises(SelfRLError, match=r"evaluator changed .*task source"):
        search(load_evolve(cfg), tmp_path / "out", progress=False)
    assert len(json.loads((tmp_path / "out" / "archive.json").read_text())["nodes"]) == 2  # nothing more ran


def test_compare_runs_each_selection_and_shares_the_start(tmp_path, monkeypatch):
    from selfrl.lab.evolve import run_evolve

    monkeypatch.setenv("FAKE_SLEEP", "0")
    cfg = write_config(tmp_path, budget={"children": 2}, compare=["dgm", "latest"], search_seeds=[0],
                       heldout_seeds=[5])
    out = run_evolve(cfg, tmp_path / "cmp", compare=True, progress=False)
    dgm, latest = (json.loads((out / s / "seed_0" / "archive.json").read_text()) for s in ("dgm", "latest"))
    assert dgm["config"]["selection"] == "dgm" and latest["config"]["selection"] == "latest"
    # the start recipe ran once: the second search read both of its stages from the shared cache
    assert [r["cached"] for r in dgm["nodes"][0]["runs"]] == [False, False]
    assert [r["cached"] for r in latest["nodes"][0]["runs"]] == [True, True]
    assert latest["nodes"][0]["scores"] == dgm["nodes"][0]["scores"] == pytest.approx([0.2, 0.3])
    # held-out seed 5 of the start (lr 4e-4, 30 steps): 0.3 as on seed 0, since the fake child ignores seeds
    assert dgm["heldout"]["start"] == {"5": {"status": "ok", "score": pytest.approx(0.3)}}
    report = (out / "report.md").read_text()
    assert "| dgm | 1 |" in report and "| latest | 1 |" in report and (out / "best_so_far.png").is_file()
    with pytest.raises(SelfRLError, match="no archive"):
        run_evolve(cfg, tmp_path / "empty", report_only=True, progress=False)


def test_compare_split_over_processes_with_only(tmp_path, monkeypatch):
    # `--only` runs a subset of --compare's searches (two processes side by side share the cache); the report
    # waits until every search has an archive, and a selection or seed outside the comparison is refused
    from selfrl.lab.evolve import run_evolve

    monkeypatch.setenv("FAKE_SLEEP", "0")
    cfg = write_config(tmp_path, budget={"children": 1}, compare=["dgm", "latest"], search_seeds=[0, 1])
    out = tmp_path / "cmp"
    assert run_evolve(cfg, out, compare=True, progress=False, only=["latest/1"]) is None
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.glob("*/*/archive.json")) == ["latest/seed_1"]
    # a search another process is still running has an archive, but no report is written over it
    running = out / "latest" / "seed_1" / "archive.json"
    done = json.loads(running.read_text())
    assert done["finished"] is True
    running.write_text(json.dumps({**done, "finished": False}))
    assert run_evolve(cfg, out, compare=True, progress=False, only=["dgm", "latest/0"]) is None
    assert not (out / "report.md").exists()
    running.write_text(json.dumps(done))
    assert run_evolve(cfg, out, compare=True, progress=False, only=["dgm", "latest/0"]) == out
    assert (out / "report.md").is_file() and len(list(out.glob("*/*/archive.json"))) == 4
    for bad in ("random", "dgm/7", "dgm/x"):
        with pytest.raises(ConfigError, match=f"--only {bad}"):
            run_evolve(cfg, out, compare=True, progress=False, only=[bad])
    with pytest.raises(ConfigError, match="add --compare"):
        run_evolve(cfg, out, progress=False, only=["dgm"])


def test_minutes_budget_counts_the_search_wall_time(tmp_path, monkeypatch):
    # 0.001 minutes (0.06 s) are spent by the start recipe's two runs (two interpreter starts), so no child is
    # proposed; budget values must be positive integers for children and steps
    monkeypatch.setenv("FAKE_SLEEP", "0")
    archive = search(load_evolve(write_config(tmp_path, budget={"minutes": 0.001})), tmp_path / "out", progress=False)
    assert len(archive["nodes"]) == 1 and archive["elapsed_s"] > 0.06
    with pytest.raises(ConfigError, match="budget.children"):
        load_evolve(write_config(tmp_path, budget={"children": 2.5}))


def _comparable(archive: dict) -> list[dict]:
    """The nodes without what a wall clock decides (run times, and whether a run came from the cache)."""
    return [{**n, "runs": [{k: v for k, v in r.items() if k not in ("wall_s", "cached")} for r in n["runs"]]}
            for n in archive["nodes"]]


def test_resume_after_sigkill_reproduces_the_archive(tmp_path):
    cfg = write_config(tmp_path, budget={"children": 5})
    env = {**os.environ, "FAKE_SLEEP": "0.3", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "selfrl", "evolve", str(cfg), "--no-progress", "--out"]
    proc = subprocess.Popen([*cmd, str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    archive_path = tmp_path / "killed" / "archive.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill while a child of node 2 or later is running
        if archive_path.is_file():
            nodes = json.loads(archive_path.read_text())["nodes"]
            if len(nodes) >= 3 and nodes[-1]["status"] == "running" and \
                    list((tmp_path / "killed" / "nodes" / f"{nodes[-1]['id']:04d}").glob("*.yaml")):
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = json.loads(archive_path.read_text())["nodes"]
    assert interrupted[-1]["status"] == "running" and len(interrupted) < 6
    resumed = subprocess.run([*cmd, str(tmp_path / "killed")], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run([*cmd, str(tmp_path / "whole")], env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    a, b = (json.loads((tmp_path / d / "archive.json").read_text()) for d in ("killed", "whole"))
    assert len(a["nodes"]) == 6 and _comparable(a) == _comparable(b)


# ------------------------------------------------------------------------------------------------ end to end
def test_end_to_end_with_real_selfrl_train_children(tmp_path, tiny_model_dir):
    from tests.conftest import tiny_sets

    base = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in tiny_sets(tiny_model_dir, tmp_path / "unused"))}
    del base["output_dir"], base["max_steps"]
    base.update(torch_threads=1, save_every=0, eval_every=2)
    data = {"base": base, "space": {"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}},
            "stages": [{"set": {"max_steps": 2}}], "budget": {"children": 1}, "child_timeout_s": 600}
    cfg = tmp_path / "evolve.yaml"
    cfg.write_text(yaml.safe_dump(data))
    nodes = search(load_evolve(cfg), tmp_path / "out", progress=False)["nodes"]
    assert [n["status"] for n in nodes] == ["ok", "ok"], nodes[-1]["log_tail"]
    for n in nodes:  # the score is the val/accuracy that the child's own run logged last
        run_dir = tmp_path / "out" / n["runs"][0]["dir"]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert n["score"] == [r["val/accuracy"] for r in rows if "val/accuracy" in r][-1]
        ran = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert ran["learning_rate"] == n["recipe"].get("learning_rate", base["learning_rate"]) and ran["max_steps"] == 2
    assert nodes[1]["diff"]["learning_rate"][0] == base["learning_rate"]


def test_shipped_config_loads_and_builds_valid_child_configs(tmp_path):
    # the example config of docs/evolve.md: every stage of the start recipe is a valid train config on the study's
    # task, and its held-out seeds are disjoint from the seeds its stages select on
    from selfrl.lab.evolve import child_config

    ec = load_evolve(Path(__file__).parents[1] / "selfrl/lab/configs/evolve.yaml")
    stage_seeds = {s for st in ec.stages for s in st.seeds}
    assert stage_seeds and not stage_seeds & set(ec.heldout_seeds)
    for st in ec.stages:
        cfg = child_config(ec, {}, st, st.seeds[0], str(tmp_path / "run"))
        assert (cfg.model, cfg.task, cfg.method) == ("organism2", "sums", "mgrpo")
        assert cfg.max_steps == st.sets["max_steps"]
