"""Child process for the kill/resume tests: run `train` and SIGKILL ourselves at a chosen moment.

    python -m tests.crash_child CONFIG_YAML POINT N

POINT names a function the trainer calls; on its N-th call the process kills itself with SIGKILL, either before
the call ("...:before") or halfway through it (the default for writes: the function has started writing).
"""
from __future__ import annotations

import os
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, n: int) -> None:
    import selfrl.checkpoint as ckpt
    import selfrl.logger as logger
    import selfrl.grpo as train
    import selfrl.run as run
    import selfrl.rundir as rundir

    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    def wrap(module, name: str, mid=None):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            if hit():
                if mid is None:
                    die()
                mid(original, *args, **kwargs)
            return original(*args, **kwargs)

        setattr(module, name, wrapped)

    def half_file(original, tensors, path, *args, **kwargs):
        original(tensors, path, *args, **kwargs)  # write it, then cut it in half: a torn write
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        die()

    def half_line(original, self, step, metrics):
        self.file.write('{"step": %d, "reward/pse' % step)  # a line cut short mid-write
        self.file.flush()
        die()

    if point == "generate":  # mid-rollout, weights untouched since the last step
        wrap(train, "generate")
    elif point == "ema":  # after the optimizer step, before the momentum update: policy and EMA disagree
        wrap(train.core, "ema_update_")
    elif point == "eval":  # during greedy evaluation
        wrap(run, "greedy_accuracy")
    elif point == "save_torn":  # inside a checkpoint write: the momentum file is torn, the .tmp dir half full
        wrap(ckpt, "save_file", mid=half_file)
    elif point == "pointer":  # checkpoint renamed into place, pins not yet written
        wrap(run, "set_pointer")  # step 0's pins (begin) and every later checkpoint's (save_and_pin)
        wrap(rundir, "set_pointer")
    elif point == "prune":  # retention renamed an old checkpoint to *.trash and died before deleting it
        rmtree = ckpt.shutil.rmtree

        def rmtree_or_die(path, *args, **kwargs):
            if str(path).endswith(".trash") and os.path.exists(path) and hit():
                die()
            return rmtree(path, *args, **kwargs)

        ckpt.shutil.rmtree = rmtree_or_die
    elif point == "log":  # metrics.jsonl gets half a line
        wrap(logger.MetricsLogger, "log", mid=half_line)
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    from selfrl.grpo_config import load_config
    from selfrl.grpo import train as run

    cfg_path, point, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    arm(point, n)
    run(load_config(cfg_path))
    sys.exit(3)  # the kill never came: the test must notice
