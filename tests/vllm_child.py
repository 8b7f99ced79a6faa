"""Child for the many-process vLLM test (tests/test_vllm.py): every process gets its own engine double (as each
process gets its own vLLM engine), which records the checksum of the weights it holds at every generate call into
RECORD_DIR/engine_<rank>.jsonl; then the CLI runs with the remaining arguments.

    accelerate launch ... -m tests.vllm_child RECORD_DIR train --set use_vllm=true ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace


def arm(record_dir: Path) -> None:
    from selfrl import distributed as dist
    from selfrl import vllm_backend
    from selfrl.distributed import checksum
    from tests.test_vllm import EngineDouble

    class Recording(EngineDouble):
        def generate(self, prompts, sampling_params, use_tqdm=False):
            out = super().generate(prompts, sampling_params, use_tqdm)
            with open(Path(record_dir) / f"engine_{dist.rank()}.jsonl", "a") as f:
                f.write(json.dumps({"checksum": checksum(self.seen[-1].values()), "loads": self.loads}) + "\n")
            return out

    vllm_backend.make_engine = lambda model_path, *a, **k: Recording(model_path)
    vllm_backend.sampling_params = lambda **kw: SimpleNamespace(**kw)


if __name__ == "__main__":
    from selfrl.cli import main

    arm(Path(sys.argv[1]))
    raise SystemExit(main(sys.argv[2:]))
