import os
import shutil
import tempfile

import pytest

# Tests never reach a model hub: everything loads from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Preprocessed CTs go to one throw-away folder per test session, never to the user's ~/.cache.
os.environ["MEDMOE_CACHE"] = tempfile.mkdtemp(prefix="medmoe-test-cache-")


@pytest.fixture(scope="session", autouse=True)
def _remove_test_cache():
    yield
    shutil.rmtree(os.environ["MEDMOE_CACHE"], ignore_errors=True)


@pytest.fixture
def torchrun_env(tmp_path):
    """Environment for a `torch.distributed.run` subprocess: one thread per rank, no inherited rank
    variables, and torchrun's per-run log folders kept inside the test's tmp_path instead of /tmp."""
    scratch = tmp_path / "torchrun-tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}


@pytest.fixture
def torchrun(torchrun_env):
    """``torchrun(script, *args, cwd=None, timeout=220)``: run ``script`` in 2 processes (gloo) with
    ``torch.distributed.run --standalone`` and fail with their output when any of them fails."""
    import subprocess
    import sys

    def run(script, *args, cwd=None, timeout: float = 220):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               *(str(a) for a in args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=torchrun_env, cwd=cwd)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc

    return run


@pytest.fixture
def http_server():
    """Start local HTTP servers on 127.0.0.1: ``http_server(folder)`` serves ``folder`` and returns its URL
    (shards read over the network, as corpora are kept)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    servers = []

    def start(folder) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def damage_shard():
    """``damage_shard(shard, key)`` slips a sample ``key`` with an undecodable PNG and a report in after the
    shard's first sample (a shard damaged in storage; its index.json count no longer matches)."""
    import io
    import tarfile

    def damage(shard, key: str = "broken") -> None:
        with tarfile.open(shard) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar]
        members[3:3] = [(f"{key}.png", b"\x89PNG\r\n not really"), (f"{key}.txt", b"Chest x-ray: damaged file.")]
        with tarfile.open(shard, "w") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    return damage
