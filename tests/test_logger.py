"""report_to backends: TensorBoard by default, wandb / mlflow when installed (faked here), and a missing or failing
backend never stops a run: it warns and is dropped while metrics.jsonl goes on."""
from __future__ import annotations

import sys
import types

import pytest

from selfrl.grpo_config import load_config
from selfrl.errors import ConfigError
from selfrl.logger import MetricsLogger, parse_report_to, read_metrics

METRICS = {"reward/pseudo": 0.5, "loss/pg": float("nan"), "anchor/kl": None, "train/skipped": 0, "flag": True}
SCALARS = {"reward/pseudo": 0.5, "train/skipped": 0}  # NaN, None and the bool are not plotted


def fake_wandb(calls: list, fail_on_log: bool = False):
    """A module with wandb's init / run.log / run.finish that records its calls."""
    module = types.ModuleType("wandb")

    class Run:
        def log(self, data, step):
            if fail_on_log:
                raise RuntimeError("server said no")
            calls.append(("log", dict(data), step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    module.init = init
    return module


def fake_mlflow(calls: list):
    module = types.ModuleType("mlflow")
    module.start_run = lambda **kw: calls.append(("start_run", kw))
    module.log_params = lambda params: calls.append(("log_params", dict(params)))
    module.log_metrics = lambda metrics, step: calls.append(("log_metrics", dict(metrics), step))
    module.end_run = lambda: calls.append(("end_run",))
    return module


def test_report_to_accepts_backends_and_comma_lists():
    assert parse_report_to("none") == []
    assert parse_report_to("tensorboard, wandb,mlflow") == ["tensorboard", "wandb", "mlflow"]
    assert load_config(None, ["report_to=tensorboard,wandb"]).report_to == "tensorboard,wandb"
    with pytest.raises(ConfigError, match=r"report_to: 'comet' is not one of tensorboard, wandb, mlflow \(or 'none' alone\)"):
        load_config(None, ["report_to=wandb,comet"])
    with pytest.raises(ConfigError, match=r"report_to: 'none' is not one of"):
        load_config(None, ["report_to=none,wandb"])


def test_missing_packages_warn_and_the_run_logs_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # None in sys.modules: `import wandb` raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with caplog.at_level("WARNING", logger="selfrl.logger"):
        logger = MetricsLogger(tmp_path, "wandb,mlflow")
        logger.log(1, METRICS)
        logger.close()
    assert "wandb logging disabled: ModuleNotFoundError" in caplog.text
    assert "MLflow logging disabled: ModuleNotFoundError" in caplog.text
    assert read_metrics(tmp_path) == [{"step": 1, **METRICS, "loss/pg": None}]


def test_wandb_and_mlflow_receive_the_scalars(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow(calls))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run = tmp_path / "my_run"
    run.mkdir()
    (run / "config.yaml").write_text("method: mgrpo\nlearning_rate: 1.0e-06\n")
    logger = MetricsLogger(run, "wandb,mlflow")
    logger.log(3, METRICS)
    logger.close()
    assert calls == [
        ("init", {"project": "selfrl", "name": "my_run", "dir": str(run),
                  "config": {"method": "mgrpo", "learning_rate": 1e-6}}),
        ("start_run", {"run_name": "my_run"}),
        ("log_params", {"method": "mgrpo", "learning_rate": "1e-06"}),
        ("log", SCALARS, 3),
        ("log_metrics", SCALARS, 3),
        ("finish",),
        ("end_run",),
    ]
    assert not (run / "tb").exists()  # only the backends asked for


def test_a_failing_backend_is_dropped_after_one_warning(tmp_path, monkeypatch, caplog):
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls, fail_on_log=True))
    with caplog.at_level("WARNING", logger="selfrl.logger"):
        logger = MetricsLogger(tmp_path, "tensorboard,wandb")
        for step in (1, 2, 3):
            logger.log(step, METRICS)
        logger.close()
    assert caplog.text.count("wandb write failed, disabling it: RuntimeError: server said no") == 1
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert list((tmp_path / "tb").iterdir())  # TensorBoard kept writing
    assert ("finish",) not in calls  # a dropped backend is not closed again


def test_tensorboard_is_the_default(tmp_path):
    logger = MetricsLogger(tmp_path)
    logger.log(0, METRICS)
    logger.close()
    assert list((tmp_path / "tb").iterdir())
