"""Issue 6 item 3: every row of docs/errors.md, through the real command line (`selfrl.cli.main`, in process so a
row can simulate a full disk): a one-line `selfrl: error: ...` naming the problem, exit code 2, and no checkpoint
lost — a finished run sits next to every case and must verify byte for byte afterwards."""
from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

import pytest

from selfrl.checkpoint import list_checkpoints, verify_checkpoint
from selfrl.cli import main
from tests.conftest import tiny_sets

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "gold_tasks.py"


def sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def train_args(ws: Path, model: Path, *pairs: str, out: str = "new") -> list[str]:
    return ["train", *sets(*tiny_sets(model, ws / out), *pairs)]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


IMPORT_FAILS = "import not_a_real_package\n"
LACKS_METHODS = "class T:\n    def train_prompts(self):\n        return []\n"
ROW = '{"prompt": "12+34+56="}\n'
RAISING_TASK = ("from selfrl.tasks.arith import ArithTask\n\n\nclass T(ArithTask):\n"
                "    def train_prompts(self):\n        raise ValueError('row 3 has no question')\n")


_HELD = []  # locks the output-in-use case holds while the command runs, as a first `train` would


def lock_dir(path: Path) -> None:
    from selfrl.rundir import lock_run_dir

    path.mkdir()
    _HELD.append(lock_run_dir(path))


def truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2].rsplit("\n", 1)[0] + "\n")


def early_run(ws: Path) -> None:
    """A run directory whose run stopped before its first checkpoint: config and metrics, no step_*."""
    (ws / "early").mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(ws / "prev" / name, ws / "early" / name)


def data_args(ws: Path, model: Path, text: str) -> list[str]:
    """Train on a JSONL prompt file holding `text`."""
    return train_args(ws, model, f"train_file={write(ws / 'd.jsonl', text)}")


def parquet_args(ws: Path, model: Path, columns: dict) -> list[str]:
    """Train on a Parquet prompt file holding these columns."""
    import pandas as pd

    pd.DataFrame(columns).to_parquet(ws / "d.parquet")
    return train_args(ws, model, f"train_file={ws / 'd.parquet'}")


def hub_offline(monkeypatch) -> None:
    """No hub is reachable from the tests: offline mode makes `datasets` fail at once instead of after timeouts."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def no_pad_no_eos(ws: Path, model: Path) -> Path:
    """A copy of the tiny model whose tokenizer has neither a pad nor an EOS token."""
    from transformers import AutoTokenizer

    out = ws / "bare_model"
    shutil.copytree(model, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.pad_token, tok.eos_token = None, None
    tok.save_pretrained(out)
    return out


def full_disk(monkeypatch) -> None:
    """The third checkpoint write finds the disk full."""
    import selfrl.checkpoint as ckpt

    real, calls = ckpt.torch.save, {"n": 0}

    def save(obj, path, *a, **k):
        if str(path).endswith("optimizer.pt"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", save)


# id (the row of docs/errors.md), argv builder (ws, model, monkeypatch) -> argv, regex the one-line message must match
CASES = [
    ("unknown-key", lambda ws, m, mp: ["train", str(write(ws / "c.yaml", "lerning_rate: 1e-5\n"))],
     r"unknown config key 'lerning_rate' in .*c\.yaml \(did you mean 'learning_rate'\?\)"),
    ("unknown-set-key", lambda ws, m, mp: ["train", *sets("num_generation=8")],
     r"unknown config key 'num_generation' in --set \(did you mean 'num_generations'\?\)"),
    ("wrong-type", lambda ws, m, mp: ["train", *sets("learning_rate=fast")],
     r"learning_rate: expected a number, got 'fast'"),
    ("report-to-unknown", lambda ws, m, mp: ["train", *sets("report_to=tensorboard,comet")],
     r"report_to: 'comet' is not one of tensorboard, wandb, mlflow \(or 'none' alone\)"),
    ("missing-config", lambda ws, m, mp: ["train", str(ws / "nope.yaml")], r"config file not found: .*nope\.yaml"),
    ("bad-yaml", lambda ws, m, mp: ["train", str(write(ws / "c.yaml", "method: [srt\n"))],
     r"c\.yaml line 2: not valid YAML: expected ',' or '\]', but got '<stream end>'"),
    ("missing-model", lambda ws, m, mp: train_args(ws, m, f"model={ws / 'no_such_model'}"),
     r"model path not found: .*no_such_model"),
    ("not-a-model", lambda ws, m, mp: train_args(ws, m, f"model={ws}"), r"model directory .* has no config\.json: not a Hugging Face model \(save_pretrained\) directory"),
    ("tokenizer-no-eos", lambda ws, m, mp: train_args(ws, m, f"model={no_pad_no_eos(ws, m)}"),
     r"tokenizer of '.*bare_model' has no EOS token: completions could never end"),
    ("empty-dataset", lambda ws, m, mp: data_args(ws, m, ""),
     r"d\.jsonl: the file is empty; expected one JSON object per line"),
    ("malformed-dataset-line", lambda ws, m, mp: data_args(ws, m, ROW + ROW + "{prompt: 4}\n"),
     r"d\.jsonl line 3: not valid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
    ("empty-dataset-line", lambda ws, m, mp: data_args(ws, m, ROW + "\n" + ROW),
     r"d\.jsonl line 2: empty line; expected a JSON object"),
    ("dataset-no-prompt", lambda ws, m, mp: data_args(ws, m, '{"question": "1+2+3="}\n'),
     r"d\.jsonl line 1: field 'prompt' must be a non-empty string"),
    ("dataset-partial-answers", lambda ws, m, mp: data_args(ws, m, '{"prompt": "1+2+3=", "answer": "6"}\n' + ROW),
     r"d\.jsonl line 2: no 'answer' field, but other lines have one; give every line an answer or none"),
    ("dataset-missing-column", lambda ws, m, mp: parquet_args(ws, m, {"question": ["1+2+3="]}),
     r"d\.parquet: no column 'prompt' \(columns: question\); set prompt_column"),
    ("dataset-unreadable", lambda ws, m, mp: train_args(ws, m, f"train_file={write(ws / 'g.parquet', 'PAR1 garbage')}"),
     r"g\.parquet: cannot read as Parquet \(ArrowInvalid: .+\)"),
    ("dataset-unsupported-type", lambda ws, m, mp: train_args(ws, m, f"train_file={write(ws / 'd.json', ROW)}"),
     r"d\.json: unsupported dataset file; train_file takes \.jsonl, \.parquet, \.csv or a hub dataset id"),
    ("hub-dataset-unreachable", lambda ws, m, mp: hub_offline(mp) or train_args(
        ws, m, "train_file=nobody-selfrl/no-such-set:test"),
     r"train_file 'nobody-selfrl/no-such-set:test' is no local file, and loading it as a hub dataset failed: "
     r"ConnectionError: .*OfflineModeIsEnabled"),
    ("task-import-fails", lambda ws, m, mp: train_args(
        ws, m, f"task={write(ws / 't.py', IMPORT_FAILS)}:T"),
     r"task file .*t\.py failed to import: ModuleNotFoundError: No module named 'not_a_real_package'"),
    ("task-lacks-method", lambda ws, m, mp: train_args(
        ws, m, f"task={write(ws / 't.py', LACKS_METHODS)}:T"),
     r"task '.*t\.py:T' lacks method\(s\): format_prompt, extract_answer, is_equivalent, eval_examples"),
    ("oracle-without-answers", lambda ws, m, mp: train_args(ws, m, "method=oracle", f"task={TASKS}:NoGold"),
     r"task 'arith' has no gold training answers \(method 'oracle' needs them\)"),
    ("chat-template-missing", lambda ws, m, mp: train_args(ws, m, "apply_chat_template=true"),
     r"apply_chat_template: true, but the tokenizer of '.*' has no chat template"),
    ("group-too-small", lambda ws, m, mp: train_args(ws, m, "num_generations=1"),
     r"num_generations: must be at least 2 for group advantages, got 1"),
    ("momentum-takes-all", lambda ws, m, mp: train_args(ws, m, "method=mgrpo", "num_momentum_generations=4"),
     r"num_momentum_generations: 4 of num_generations=4 leaves fewer than 2 policy rollouts"),
    ("unwritable-output", lambda ws, m, mp: train_args(ws, m, out="prev/config.yaml/run"),
     r"output_dir .*config\.yaml/run is not writable: Not a directory"),
    ("output-holds-a-run", lambda ws, m, mp: train_args(ws, m, out="prev"),
     r"output_dir .*prev already holds a run; pass --resume .*prev or choose another output_dir"),
    ("disk-full", lambda ws, m, mp: full_disk(mp) or train_args(ws, m, "max_steps=4"),
     r"saving checkpoint step_000003 failed: no space left on device; the last checkpoint on disk, step_000002, is intact"),
    ("resume-not-a-run", lambda ws, m, mp: ["train", "--resume", str(ws)],
     r"--resume .*: no config\.yaml there; is it a run directory\?"),
    ("resume-all-corrupt", lambda ws, m, mp: [p.joinpath("rng.pt").unlink() for p in list_checkpoints(ws / "prev")]
     and ["train", "--resume", str(ws / "prev")], r"--resume .*prev: no intact checkpoint found"),
    ("resume-bad-override", lambda ws, m, mp: ["train", "--resume", str(ws / "prev"), *sets("temperature=0")],
     r"temperature: must be > 0, got 0\.0"),
    ("eval-unknown-split", lambda ws, m, mp: ["eval", str(ws / "prev"), "--split", "train"],
     r"task 'arith' has labelled splits 'val', 'test' and 'stop', not 'train'"),
    ("yaml-leading-zero", lambda ws, m, mp: ["train", str(write(ws / "c.yaml", "seed: 010\n"))],
     r"c\.yaml line 1: value of 'seed': 010 is 8 in YAML 1\.1 and 10 in YAML 1\.2 \(a leading zero\)"),
    ("yaml-repeated-key", lambda ws, m, mp: ["train", str(write(ws / "c.yaml", "seed: 1\nmethod: srt\nseed: 2\n"))],
     r"c\.yaml line 3: key 'seed' repeated \(first on line 1\); a repeated key would silently keep its last value"),
    ("task-method-raises", lambda ws, m, mp: train_args(ws, m, f"task={write(ws / 't.py', RAISING_TASK)}:T"),
     r"task method train_prompts raised ValueError: row 3 has no question"),
    ("organism-cannot-encode", lambda ws, m, mp: data_args(ws, m, '{"prompt": "twelve plus five="}\n'),
     r"d\.jsonl: 1 of 1 texts hold characters the tokenizer cannot encode: .*e\.g\. 'twelve plus five='"),
    ("model-is-a-file", lambda ws, m, mp: train_args(ws, m, f"model={write(ws / 'afile', 'x')}"),
     r"model path .*afile is a file, not a model directory \(save_pretrained\) or \.gguf file"),
    ("config-is-a-directory", lambda ws, m, mp: ["train", str(ws)], r"config file .* is a directory; give a YAML file"),
    ("resume-changes-method", lambda ws, m, mp: ["train", "--resume", str(ws / "prev"), *sets("method=srt")],
     r"--resume .*prev: method cannot change on resume \(the run has 'mgrpo', --set says 'srt'\)"),
    ("resume-truncated-config", lambda ws, m, mp: truncate(ws / "prev" / "config.yaml")
     or ["train", "--resume", str(ws / "prev")],
     r"--resume .*prev: config\.yaml lacks \d+ field\(s\) .*refusing to resume on defaults"),
    ("output-holds-checkpoints", lambda ws, m, mp: (ws / "prev" / "metrics.jsonl").unlink()
     or train_args(ws, m, out="prev"), r"output_dir .*prev already holds a run"),
    ("output-run-without-checkpoint", lambda ws, m, mp: early_run(ws) or train_args(ws, m, out="early"),
     r"output_dir .*early holds a run that stopped before its first checkpoint, so it cannot be resumed; delete"),
    ("output-in-use", lambda ws, m, mp: lock_dir(ws / "busy") or train_args(ws, m, out="busy"),
     r"output_dir .*busy is in use by selfrl process \d+; wait for it to finish or choose another output_dir"),
    ("negative-grad-norm", lambda ws, m, mp: train_args(ws, m, "max_grad_norm=-1"),
     r"max_grad_norm: must be > 0 \(a negative clip norm flips every update\), got -1\.0"),
    ("early-stopping-on-test", lambda ws, m, mp: train_args(ws, m, "early_stopping_patience=2",
                                                            "early_stopping_split=test"),
     r"early_stopping_split: 'test' reports the result; a checkpoint picked on it would be judged on the data"),
    ("prompt-too-long", lambda ws, m, mp: data_args(ws, m, '{"prompt": "%s="}\n' % ("1+" * 40 + "1")),
     r"training prompt 0 is 82 tokens; with max_completion_length 12 it exceeds the model's context of 64 tokens"),
    ("no-cuda", lambda ws, m, mp: train_args(ws, m, "device=cuda"), r"device: cuda requested but torch sees no CUDA device"),
    ("vllm-no-gpu", lambda ws, m, mp: train_args(ws, m, "use_vllm=true"),
     r"use_vllm: vLLM rollouts need a CUDA GPU; torch sees none \(set use_vllm: false on CPU\)"),
    ("fsdp-lora", lambda ws, m, mp: train_args(ws, m, "fsdp=true", "use_peft=true"),
     r"fsdp: LoRA trains a few adapter weights on a frozen base; shard full-weight training only"),
    ("lora-bad-target", lambda ws, m, mp: train_args(ws, m, "use_peft=true", "lora_target_modules=no_such_proj"),
     r"lora_target_modules: Target modules \{'no_such_proj'\} not found in the base model"),
    ("export-not-a-checkpoint", lambda ws, m, mp: ["export", str(ws), "--out", str(ws / "model")],
     r"is neither a run directory \(metrics.jsonl\) nor a step_\* checkpoint \(meta.json\)"),
    ("export-exists", lambda ws, m, mp: ["export", str(ws / "prev"), "--out", str(ws / "prev")],
     r"WS/prev already exists; choose another directory".replace("WS", ".*")),
]


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "prev"
    assert main(["train", *sets(*tiny_sets(tiny_model_dir, run))]) == 0
    return run


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("step_*/**/*")) if p.is_file()}


@pytest.mark.parametrize("case,argv,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_nonzero_and_loses_nothing(case, argv, pattern, tiny_model_dir, finished_run, tmp_path,
                                                         capsys, monkeypatch):
    if case in ("no-cuda", "vllm-no-gpu"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    ws = tmp_path
    shutil.copytree(finished_run, ws / "prev")
    before = snapshot(ws / "prev")
    capsys.readouterr()
    code = main(argv(ws, tiny_model_dir, monkeypatch))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("selfrl: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    if case != "resume-all-corrupt":  # that case deleted files on purpose, to make every checkpoint corrupt
        assert snapshot(ws / "prev") == before, "a checkpoint of the finished run was changed"
        assert all(verify_checkpoint(p) is None for p in list_checkpoints(ws / "prev"))
    if case == "disk-full":
        assert [p.name for p in list_checkpoints(ws / "new")] == ["step_000001", "step_000002"]
        assert verify_checkpoint(ws / "new" / "step_000002") is None
        assert not list((ws / "new").glob("*.tmp")), "the partial write was cleaned up"


def test_docs_errors_table_lists_exactly_the_tested_cases():
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", (ROOT / "docs" / "errors.md").read_text(), flags=re.M)
    assert sorted(rows) == sorted(c[0] for c in CASES)
    assert len(rows) >= 15


def test_tokenizer_without_pad_token_falls_back_to_eos(tiny_model_dir, tmp_path, caplog):
    """Not an error: like TRL, a tokenizer with EOS but no pad token pads with EOS (padding is masked everywhere)."""
    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.pad_token = None
    tok.save_pretrained(model)
    with caplog.at_level("WARNING", logger="selfrl"):
        assert main(["train", *sets(*tiny_sets(model, tmp_path / "run"))]) == 0
    assert "has no pad token; using its EOS token for padding" in caplog.text
