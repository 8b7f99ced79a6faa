"""Organism v2 and organisms for any task (issue 14): the `sums` task's worked solutions, the task-organism builder
and its CLI, and the sampled evaluation (mean@k, maj@k) on hand-computed completions."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfrl.errors import TaskError
from selfrl.evaluate import maj_at_k, mean_at_k
from selfrl.organism import OrganismSpec, resolve_organism, task_chars, task_organism_path, task_sft_pairs
from selfrl.tasks import load_task
from selfrl.tasks.sums import SPLIT_SIZES, SumsTask, tree_solution, worked_solution
from tests.conftest import policy_weights

LETTERS = str(Path(__file__).with_name("letter_task.py"))
TINY_SETS = ["hidden_size=32", "intermediate_size=64", "num_hidden_layers=2", "num_attention_heads=2",
             "sft_max_steps=30", "sft_eval_every=15", "target_accuracy=1.1", "sft_learning_rate=3e-3", "sft_batch_size=32"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfrl", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def check_worked(question: str, completion: str) -> None:
    """A chain adds each operand of the question exactly once, a tree adds two pairs and then their sums; every
    written sum is right and the last one is the question's sum."""
    operands = [int(x) for x in question.rstrip("=").split("+")]
    tree = re.fullmatch(r"(\d+)\+(\d+)=(\d+),(\d+)\+(\d+)=(\d+),(\d+)\+(\d+)=(\d+)", completion)
    if tree:
        a, b, s1, c, d, s2, x, y, total = map(int, tree.groups())
        assert (s1, s2, x, y, total) == (a + b, c + d, s1, s2, s1 + s2), (question, completion)
        terms = [a, b, c, d]
    else:
        chain = re.fullmatch(r"(\d+)((?:\+\d+=\d+)+)", completion)
        assert chain, completion
        total, terms = int(chain.group(1)), [int(chain.group(1))]
        for term, partial in re.findall(r"\+(\d+)=(\d+)", chain.group(2)):
            total += int(term)
            terms.append(int(term))
            assert int(partial) == total, (question, completion)
    assert sorted(terms) == sorted(operands) and total == sum(operands), (question, completion)


def test_worked_solutions_every_path():
    # 47+85+19+33 = 184. Chain along order (1, 2, 0, 3): 85+19 = 104, +47 = 151, +33 = 184. Tree along order
    # (2, 0, 3, 1): 19+47 = 66, 33+85 = 118, 66+118 = 184.
    operands = [47, 85, 19, 33]
    assert worked_solution(operands, [1, 2, 0, 3]) == "85+19=104+47=151+33=184"
    assert tree_solution(operands, [2, 0, 3, 1]) == "19+47=66,33+85=118,66+118=184"
    orders = [list(o) for o in itertools.permutations(range(4))]
    texts = {f(operands, o) for o in orders for f in (worked_solution, tree_solution)}
    assert len(texts) == 48  # distinct operands: 24 chains and 24 trees, all different texts
    for text in texts:
        check_worked("47+85+19+33=", text)
        assert SumsTask.extract_answer(None, text) == "184"


def test_sums_splits_are_worked_correctly_along_varied_paths():
    task = load_task("sums")
    pairs = task.sft_examples()
    assert len(pairs) == SPLIT_SIZES["sft"] and len(task.eval_examples("val")) == 512
    for q, c in pairs:
        check_worked(q, c)
    # the path varies: half the completions are trees (binomial sd over 4000: 0.008), and a chain starts with the
    # question's first operand in about 1/4 of the chains (6 of the 24 orders), not always
    trees = sum("," in c for _, c in pairs[:4000]) / 4000
    chains = [(q, c) for q, c in pairs[:4000] if "," not in c]
    first_is_first = sum(c.split("+")[0] == q.split("+")[0] for q, c in chains) / len(chains)
    assert 0.47 < trees < 0.53 and 0.2 < first_is_first < 0.3
    questions = [set(q for q, *_ in rows) for rows in task._splits.values()]
    assert sum(map(len, questions)) == len(set().union(*questions))  # no question in two splits
    assert SumsTask().eval_examples("val") == task.eval_examples("val")  # deterministic from the data seed
    with pytest.raises(TaskError):
        task.eval_examples("sft")


def test_mean_and_maj_at_k_hand_computed():
    task = SumsTask()
    golds = ["10", "20", "30"]
    completions = [
        ["1+9=10", "5+5=10", "2+2=4", "x"],    # 2 of 4 right; vote: 10 (2 votes) beats 4 -> right
        ["9+9=18", "8+8=16", "9+9=18", "20"],  # "20" has no '=', so no answer: 0 of 4 right; vote 18 -> wrong
        ["=30", "=31", "=31", "=30"],          # 2 of 4 right; tie 30 vs 31 -> the first seen, 30 -> right
    ]
    # mean@4 = (2/4 + 0/4 + 2/4) / 3 = 1/3;  maj@4 = (1 + 0 + 1) / 3 = 2/3
    assert mean_at_k(task, completions, golds) == pytest.approx(1 / 3)
    assert maj_at_k(task, completions, golds) == pytest.approx(2 / 3)
    # No answer at all in any completion: the vote has no label, which is wrong, never right by default.
    assert maj_at_k(task, [["junk", "more junk"]], ["10"]) == 0.0


def test_missing_sft_examples_is_one_error_line(tmp_path):
    with pytest.raises(TaskError, match="no sft_examples"):
        task_sft_pairs(load_task(f"{LETTERS}:NoWarmup"))
    proc = run_cli("organism", "--task", f"{LETTERS}:NoWarmup", "--out", str(tmp_path / "m"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no sft_examples()" in proc.stderr, proc.stderr
    assert not (tmp_path / "m").exists()


def test_letter_task_gets_an_organism_through_the_cli_and_trains_two_steps(tmp_path):
    task = load_task(f"{LETTERS}:Backwards")
    chars = task_chars(task, task_sft_pairs(task))
    assert ">" in chars and "q" in chars and not set(chars) & set("0123456789")  # arith's organism lacks these
    out = tmp_path / "organism"
    proc = run_cli("organism", "--task", f"{LETTERS}:Backwards", "--out", str(out), *[a for s in TINY_SETS for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((out / "organism.json").read_text())
    assert stats["vocabulary"] == chars and stats["sft_steps"] == 30 and stats["spec"]["hidden_size"] == 32
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("xyz>", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4 and tok.unk_token_id not in ids  # one token per character, every one known
    run = tmp_path / "run"
    sets = dict(model=str(out), task=f"{LETTERS}:Backwards", output_dir=str(run), method="srt", max_steps=2,
                prompts_per_step=4, num_generations=8, max_completion_length=6, learning_rate=1e-2, eval_every=1,
                eval_limit=8, save_every=1, progress="false", report_to="none", beta=0.0, temperature=1.0)
    proc = run_cli("train", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
    assert proc.returncode == 0, proc.stderr
    before, after = load_file(out / "model.safetensors"), policy_weights(run / "step_000002")
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 0


def test_bad_organism_set_and_existing_out_are_errors(tmp_path):
    proc = run_cli("organism", "--task", f"{LETTERS}:Backwards", "--out", str(tmp_path / "m"), "--set", "width=3")
    assert proc.returncode == 2 and "width=3" in proc.stderr
    proc = run_cli("organism", "--task", f"{LETTERS}:Backwards", "--out", str(tmp_path))
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_task_organism_is_cached_by_spec_and_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFRL_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    spec = OrganismSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        sft_max_steps=2, sft_eval_every=1, target_accuracy=1.1, sft_batch_size=8)
    first = task_organism_path(f"{LETTERS}:Backwards", spec, progress=False)
    assert (first / "organism.json").is_file()
    import selfrl.organism as organism

    def no_training(*_args, **_kw):
        raise AssertionError("a cached organism was trained again")

    monkeypatch.setattr(organism, "train_task_organism", no_training)
    assert task_organism_path(f"{LETTERS}:Backwards", spec, progress=False) == first
    assert resolve_organism("some/model/dir") == "some/model/dir"  # not an organism spelling: unchanged


def test_organism2_is_the_shipped_build_of_its_recipe_on_todays_data(monkeypatch):
    """`organism2` resolves to the build shipped in the package, without training: its recipe is ORGANISM2, it was
    trained on the sums task's current warm-up data, and it is the model docs/organism2.md measures (validation greedy
    0.504; a tolerance of 6 questions for another CPU's rounding at inference)."""
    import selfrl.organism as organism
    from selfrl.evaluate import greedy_accuracy
    from selfrl.models import load_model

    def no_training(*_args, **_kw):
        raise AssertionError("organism2 was trained instead of loaded")

    monkeypatch.setattr(organism, "train_task_organism", no_training)
    path = Path(resolve_organism("organism2", progress=False))
    assert path == organism.SHIPPED_ORGANISM2
    stats = json.loads((path / "organism.json").read_text())
    task = load_task("sums")
    pairs = task_sft_pairs(task)
    assert stats["spec"] == dataclasses.asdict(organism.ORGANISM2)
    assert stats["vocabulary"] == task_chars(task, pairs)
    key = organism.task_organism_key(task, organism.ORGANISM2)  # the cache name of a build made today
    assert json.loads((path / "build.json").read_text())["cache_key"] == key == "organism-sums-4ca0447f1d-00c8da404e"
    assert stats["holdout_size"] == 512 and stats["sft_steps"] == organism.ORGANISM2.sft_max_steps
    torch.set_num_threads(1)
    model, tokenizer = load_model(str(path), torch.device("cpu"))
    acc = greedy_accuracy(model, tokenizer, task, task.eval_examples("val"), stats["max_new_tokens"])[0]
    assert abs(acc - 0.504) <= 6 / 512, acc


def test_damaged_shipped_organism2_is_one_error_line_and_scratch_trains_its_recipe(tmp_path, monkeypatch):
    import shutil

    import selfrl.organism as organism
    from selfrl.errors import SelfRLError

    copy = tmp_path / "organism2"
    shutil.copytree(organism.SHIPPED_ORGANISM2, copy)
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # one bit of one weight
    (copy / "model.safetensors").write_bytes(bytes(weights))
    monkeypatch.setattr(organism, "SHIPPED_ORGANISM2", copy)
    with pytest.raises(SelfRLError, match=r"does not match organism2's recorded digest.*organism2-scratch") as err:
        resolve_organism("organism2", progress=False)
    assert "\n" not in str(err.value)
    (copy / "model.safetensors").unlink()
    with pytest.raises(SelfRLError, match=r"model.safetensors is missing"):
        resolve_organism("organism2", progress=False)

    trained = []

    def fake_training(task, spec, out_dir, progress=True):  # records what it was asked to build, instantly
        trained.append((task.name, spec))
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "organism.json").write_text("{}")
        return {}

    monkeypatch.setenv("SELFRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(organism, "train_task_organism", fake_training)
    built = Path(resolve_organism("organism2-scratch", progress=False))
    assert trained == [("sums", organism.ORGANISM2)] and built.parent == tmp_path / "cache"
