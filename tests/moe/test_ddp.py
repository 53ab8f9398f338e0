import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.ddp
@pytest.mark.timeout(180)
def test_idle_expert_under_two_process_ddp(tmp_path, torchrun_env):
    worker = Path(__file__).with_name("ddp_moe_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=torchrun_env)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = {(tmp_path / f"rank{r}.txt").read_text() for r in range(2)}
    assert len(digests) == 1, "ranks ended with different parameters"
