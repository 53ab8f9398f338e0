import os

import pytest

# Tests never reach a model hub: everything loads from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def torchrun_env(tmp_path):
    """Environment for a `torch.distributed.run` subprocess: one thread per rank, no inherited rank
    variables, and torchrun's per-run log folders kept inside the test's tmp_path instead of /tmp."""
    scratch = tmp_path / "torchrun-tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
