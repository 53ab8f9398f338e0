from pathlib import Path

import pytest


@pytest.mark.ddp
@pytest.mark.timeout(180)
def test_idle_expert_under_two_process_ddp(tmp_path, torchrun):
    worker = Path(__file__).with_name("ddp_moe_worker.py")
    torchrun(str(worker), str(tmp_path), timeout=170)
    digests = {(tmp_path / f"rank{r}.txt").read_text() for r in range(2)}
    assert len(digests) == 1, "ranks ended with different parameters"
