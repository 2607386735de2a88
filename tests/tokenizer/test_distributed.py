"""Data-parallel training on CPU (gloo) under `accelerate launch`: ranks stay identical, codebook included.

accelerate's torchrun launcher (`--multi_gpu`) also starts CPU processes; Accelerator(cpu=True) then uses gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_two_process_gloo_run_keeps_ranks_identical(tmp_path: Path) -> None:
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(HERE / "ddp_worker.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["steps"] == 6 for r in ranks)
    assert ranks[0]["codebook"] == ranks[1]["codebook"], "EMA statistics and resets must be reduced across ranks"
    assert ranks[0]["state"] == ranks[1]["state"]
    assert (tmp_path / "ckpt" / "step_0000006" / "state.json").is_file()
