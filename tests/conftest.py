import os
import shutil
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent  # on sys.path (pyproject: pythonpath), holds testkit/

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
    # worker scripts import the shared helpers (`from testkit.align import ...`) like the tests do
    python_path = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return {**env, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch), "PYTHONPATH": python_path}


@pytest.fixture
def torchrun(torchrun_env):
    """``torchrun(script, *args, cwd=None, timeout=220, nodes=1)``: run ``script`` in 2 processes (gloo) with
    ``torch.distributed.run`` and fail with their output when any of them fails; returns each launcher's ``(stdout, stderr)``. ``nodes=1``: one
    ``--standalone`` launcher with 2 processes; ``nodes=2``: two launchers of one process each, node ranks 0 and
    1 meeting at a free port on 127.0.0.1 (a two-node job simulated on this machine)."""
    import subprocess
    import sys

    def run(script, *args, cwd=None, timeout: float = 220, nodes: int = 1):
        base = [sys.executable, "-m", "torch.distributed.run"]
        tail = [str(script), *(str(a) for a in args)]
        if nodes == 1:
            commands = [[*base, "--standalone", "--nproc_per_node", "2", *tail]]
        else:
            port = free_port()
            commands = [[*base, "--nnodes", str(nodes), "--nproc_per_node", "1", "--node_rank", str(rank),
                         "--master_addr", "127.0.0.1", "--master_port", str(port), *tail] for rank in range(nodes)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=torchrun_env,
                                  cwd=cwd) for cmd in commands]
        outputs = []
        try:
            for proc in procs:
                outputs.append(proc.communicate(timeout=timeout))
        finally:
            for proc in procs:
                proc.kill()
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, out[-3000:] + err[-5000:]
        return outputs

    return run


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    import tarfile

    from testkit.data import write_tar

    def damage(shard, key: str = "broken") -> None:
        with tarfile.open(shard) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar]
        members[3:3] = [(f"{key}.png", b"\x89PNG\r\n not really"), (f"{key}.txt", b"Chest x-ray: damaged file.")]
        write_tar(shard, members)

    return damage
