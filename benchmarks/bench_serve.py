"""`medmoe serve` under load: the real server on loopback, N clients (search, classify, segment of a small CT)
for T seconds, then hostile uploads; prints one JSON object.

Each arm starts its own server (``python -m medmoe serve`` with the arm's extra arguments, and optionally
another source tree on ``PYTHONPATH``, e.g. an older checkout) on a free port, with a login from
``MEDMOE_SERVE_AUTH``. Every client (a browser tab) loops over the mix on one kept-alive HTTP connection: it
uploads its file, calls the endpoint through Gradio's queue by the name the API gives it, and downloads every
file of the answer. An answer counts as failed when the call fails, when the tab says it could not, or when
a file's body is empty or not as long as its Content-Length. (gradio_client is used once per server, to read
the endpoints: its per-call threads cost as much CPU as the server's work and would share the cores with
it.) Per arm the result holds answers/s, p50/p95/max latency per kind and overall, the failed answers
(counted, with their first messages), the server's resident memory sampled every ``--rss-every`` seconds
and its CPU seconds (and the clients'). Arms run one after the other, ``--rounds`` times in alternation, so that drifting load on a shared machine
falls on each alike.

``--hostile`` then sends each bad upload once (empty, text, HTML, truncated PNG, a PNG claiming 30000 x
30000, a 9400 x 9400 single-colour PNG, a text file named .nii.gz, a gzip bomb named .nii.gz, a zip of one
300 MB member of zeros) and reports the seconds to the message in the tab, and the message.

    python benchmarks/bench_serve.py --model M --index IDX --seg-model S --image chest.png --ct ct.nii.gz \\
        --clients 8 --seconds 60 --arm batched=--batch-size=16 --arm unbatched=--batch-size=1 --hostile
    python benchmarks/bench_serve.py ... --arm 43470fc@/path/to/other/checkout/src=   # another source tree

Older servers (endpoints /run, /run_2, /run_3, no login) are recognised from their API's parameter labels.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

USER, PASSWORD = "bench", "bench-password"
QUERIES = ["pleural effusion", "cardiomegaly", "clear lungs", "pneumothorax", "nodule in the right lung",
           "normal chest", "atelectasis at the base", "enlarged heart"]
FINDINGS = ["on the left", "on the right", "small", "large", "new", "unchanged", "bilateral", "at the apex",
            "with a pacemaker", "after surgery", "in a child", "on a portable film"]
CLASSES = "normal, pleural effusion, cardiomegaly, pneumonia"
LABELS = {"search": "find images showing", "classify": "image (PNG, JPEG, DICOM)", "segment": "CT ("}


# ---------------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path


def start_server(args, extra: list[str], src: str | None, log: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "medmoe", "serve", "--port", str(port), "--device", args.device,
           "--model", args.model, "--index", args.index]
    if args.seg_model:
        cmd += ["--seg-model", args.seg_model]
    env = {**os.environ, "MEDMOE_SERVE_AUTH": f"{USER}:{PASSWORD}", "PYTHONUNBUFFERED": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    handle = open(log, "w")
    process = subprocess.Popen(cmd + extra, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return Server(process, url, log)
        except urllib.error.HTTPError:  # 401: up, and asking for a login
            return Server(process, url, log)
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the server did not answer within 300 s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children, in MB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its children so far."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


# ---------------------------------------------------------------------------------------------- clients
def endpoints(url: str) -> dict[str, str]:
    """Tab -> endpoint name, by the label of each endpoint's first parameter (named or not), read with
    gradio_client once per server."""
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    try:
        client = Client(url, verbose=False, download_files=False)
    except AuthenticationError:
        client = Client(url, auth=(USER, PASSWORD), verbose=False, download_files=False)
    api = client.view_api(return_format="dict", print_info=False)
    found = {}
    for group in ("named_endpoints", "unnamed_endpoints"):
        for name, info in api.get(group, {}).items():
            labels = [p.get("label", "") for p in info.get("parameters", [])]
            for kind, label in LABELS.items():
                if labels and labels[0].startswith(label) and kind not in found:
                    found[kind] = str(name).lstrip("/")
    return found


class WebClient:
    """One browser tab, over one kept-alive HTTP connection: logs in when asked, uploads files, calls an
    endpoint through Gradio's queue (``/gradio_api/call/<name>``, as gradio_client does, without its
    per-call threads) and downloads every file of the answer."""

    def __init__(self, url: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=600)
        if self.http.get("config").status_code == 401:
            response = self.http.post("login", data={"username": USER, "password": PASSWORD})
            response.raise_for_status()

    def upload(self, path: str) -> dict:
        with open(path, "rb") as fh:
            response = self.http.post("gradio_api/upload", files=[("files", (Path(path).name, fh))])
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}

    def call(self, name: str, data: list) -> list:
        response = self.http.post(f"gradio_api/call/{name}", json={"data": data})
        response.raise_for_status()
        event = ""
        with self.http.stream("GET", f"gradio_api/call/{name}/{response.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = json.loads(line.split(":", 1)[1])
                    if event == "error":
                        raise RuntimeError(f"server error: {payload}")
                    return payload
        raise RuntimeError(f"the stream of {name} ended without an answer")

    def problem(self, answer: list) -> str | None:
        """None when the answer is an answer with every file whole (its body as long as its Content-Length,
        and not empty), else why not."""
        status = str(answer[-1])
        if "Could not" in status:
            return f"the tab says {status[:200]!r}"
        for url in file_urls(answer):
            with self.http.stream("GET", url) as response:
                body = b"".join(response.iter_raw())  # as sent (a JSON file may come compressed)
            if response.status_code != 200:
                return f"{url}: HTTP {response.status_code}"
            declared = response.headers.get("content-length")
            if not body or (declared is not None and int(declared) != len(body)):
                return f"{url}: {len(body)} bytes, Content-Length {declared}"
        return None


def file_urls(value) -> list[str]:
    """The URLs of the files in an answer (dicts with a ``url``)."""
    if isinstance(value, dict):
        own = [value["url"]] if isinstance(value.get("url"), str) else []
        return own + [u for v in value.values() for u in file_urls(v)]
    if isinstance(value, list | tuple):
        return [u for v in value for u in file_urls(v)]
    return []


@dataclass
class Calls:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.latencies.setdefault(kind, []).append(seconds)
            else:
                self.errors.append(f"{kind}: {error}")


def query(number: int) -> str:
    """A different query for most calls (none of the page's work is cached per query)."""
    return f"{QUERIES[number % len(QUERIES)]} {FINDINGS[number // len(QUERIES) % len(FINDINGS)]}"


def request(client: WebClient, names: dict[str, str], kind: str, args, number: int) -> list:
    if kind == "search":
        return client.call(names["search"], [query(number), 12])
    if kind == "classify":
        return client.call(names["classify"], [client.upload(args.image), CLASSES, ""])
    return client.call(names["segment"], [client.upload(args.ct), args.seg_classes.split(","), "", False])


def client_loop(url: str, names: dict[str, str], mix: list[str], args, offset: int, start: threading.Barrier,
                stop_at: list[float], calls: Calls) -> None:
    try:
        client = WebClient(url)
    except Exception as err:  # noqa: BLE001 - counted; the other clients go on
        calls.add("connect", 0.0, f"{type(err).__name__}: {str(err)[:200]}")
        start.wait()
        return
    start.wait()
    number = offset
    while time.monotonic() < stop_at[0]:
        kind = mix[number % len(mix)]
        begin = time.monotonic()
        try:
            error = client.problem(request(client, names, kind, args, number))
        except Exception as err:  # noqa: BLE001 - a failed answer, counted
            error = f"{type(err).__name__}: {str(err)[:200]}"
        calls.add(kind, time.monotonic() - begin, error)
        number += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    if not values:
        return {"answers": 0}
    return {"answers": len(values), "p50_s": round(statistics.median(values), 3),
            "p95_s": round(percentile(values, 0.95), 3), "max_s": round(max(values), 3)}


def load_phase(server: Server, args) -> dict:
    mix = [kind for kind, weight in (part.split("=") for part in args.mix.split(",")) for _ in range(int(weight))]
    if not args.seg_model or not args.ct:
        mix = [kind for kind in mix if kind != "segment"]
    calls = Calls()
    start = threading.Barrier(args.clients + 1)
    stop_at = [float("inf")]
    names = endpoints(server.url)
    threads = [threading.Thread(target=client_loop, args=(server.url, names, mix, args, i, start, stop_at, calls),
                                daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    stop_at[0] = began + args.seconds
    server_cpu, own_cpu = cpu_seconds(server.process.pid), time.process_time()
    rss = [(0.0, rss_mb(server.process.pid))]
    while time.monotonic() < stop_at[0]:
        time.sleep(min(args.rss_every, max(0.0, stop_at[0] - time.monotonic())))
        rss.append((round(time.monotonic() - began, 1), round(rss_mb(server.process.pid), 1)))
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.monotonic() - began
    server_cpu, own_cpu = cpu_seconds(server.process.pid) - server_cpu, time.process_time() - own_cpu
    everything = [s for values in calls.latencies.values() for s in values]
    first, last, top = rss[0][1], rss[-1][1], max(r for _, r in rss)
    return {
        "clients": args.clients, "seconds": round(elapsed, 1),
        "answers_per_s": round(len(everything) / elapsed, 2),
        "model_answers_per_s": round(sum(len(calls.latencies.get(k, [])) for k in ("search", "classify")) / elapsed, 2),
        "all": summary(everything), **{kind: summary(values) for kind, values in sorted(calls.latencies.items())},
        "failed": len(calls.errors), "first_errors": calls.errors[:10],
        "cpu_s": {"server": round(server_cpu, 1), "clients": round(own_cpu, 1),
                  "server_per_answer": round(server_cpu / max(1, len(everything) + len(calls.errors)), 3)},
        "rss_mb": {"start": first, "end": last, "max": top, "growth_pct": round(100 * (last - first) / first, 1),
                   "samples": rss},
    }


# ---------------------------------------------------------------------------------------------- hostile uploads
def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def hostile_files(folder: Path, args) -> list[tuple[str, str, Path]]:
    """(name, tab, file) of each bad upload."""
    from PIL import Image

    files = []

    def add(name: str, tab: str, filename: str, data: bytes | None = None) -> Path:
        path = folder / filename
        if data is not None:
            path.write_bytes(data)
        files.append((name, tab, path))
        return path

    add("empty file", "classify", "empty.png", b"")
    add("text file", "classify", "notes.txt", b"patient 12: clear lungs\n" * 20)
    add("HTML page", "classify", "page.html", b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>")
    good = Path(args.image).read_bytes()
    add("truncated PNG", "classify", "cut.png", good[: max(60, len(good) // 3)])
    add("PNG claiming 30000 x 30000", "classify", "huge.png", _png_claiming(30000, 30000))
    flat = folder / "flat.png"
    Image.new("RGB", (9400, 9400), (40, 40, 40)).save(flat)
    files.append(("9400 x 9400 single-colour PNG", "classify", flat))
    add("text named .nii.gz", "segment", "fake.nii.gz", b"not a volume\n" * 10)
    bomb = folder / "bomb.nii.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as out:
        block = b"\0" * 2**20
        for _ in range(512):
            out.write(block)
    files.append(("gzip bomb named .nii.gz (512 MB of zeros)", "segment", bomb))
    zeros = folder / "zeros.zip"
    with zipfile.ZipFile(zeros, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("series/00001.dcm", "w", force_zip64=True) as member:
            for _ in range(300):
                member.write(b"\0" * 2**20)
    files.append(("zip of one 300 MB member of zeros", "segment", zeros))
    return files


def hostile_phase(server: Server, args) -> list[dict]:
    client, names = WebClient(server.url), endpoints(server.url)
    out = []
    with tempfile.TemporaryDirectory(prefix="medmoe-bench-hostile-") as tmp:
        for name, tab, path in hostile_files(Path(tmp), args):
            if tab not in names:
                continue
            begin = time.monotonic()
            try:
                upload = client.upload(str(path))
                if tab == "classify":
                    answer = client.call(names[tab], [upload, CLASSES, ""])
                else:
                    answer = client.call(names[tab], [upload, args.seg_classes.split(","), "", False])
                message = str(answer[-1])
            except Exception as err:  # noqa: BLE001 - reported as it is
                message = f"{type(err).__name__}: {err}"
            out.append({"upload": name, "bytes": path.stat().st_size, "seconds": round(time.monotonic() - begin, 3),
                        "message": message[:300]})
        after = time.monotonic()
        try:
            answer = client.call(names["search"], [QUERIES[0], 5])
            out.append({"upload": "a search afterwards", "seconds": round(time.monotonic() - after, 3),
                        "message": str(answer[-1])[:300]})
        except Exception as err:  # noqa: BLE001
            out.append({"upload": "a search afterwards", "message": f"{type(err).__name__}: {err}"})
    return out


# ---------------------------------------------------------------------------------------------- main
def parse_arm(text: str) -> tuple[str, str | None, list[str]]:
    """``NAME[@SRC]=ARGS`` -> (name, source tree or None, serve arguments split on spaces)."""
    head, _, extra = text.partition("=")
    name, _, src = head.partition("@")
    return name, src or None, extra.split()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--index", required=True)
    parser.add_argument("--seg-model", default=None)
    parser.add_argument("--image", required=True, help="the image the Classify clients upload")
    parser.add_argument("--ct", default=None, help="the (small) CT the Segment clients upload")
    parser.add_argument("--seg-classes", default="liver", help="comma-separated classes to segment")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--mix", default="search=4,classify=4,segment=1",
                        help="requests each client cycles through, kind=weight")
    parser.add_argument("--arm", action="append", default=None, metavar="NAME[@SRC]=ARGS",
                        help="a server to measure: extra `medmoe serve` arguments (spaces split them; write "
                             "--batch-size=16), optionally another source tree put first on PYTHONPATH")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rss-every", type=float, default=5.0)
    parser.add_argument("--hostile", action="store_true", help="then send the bad uploads to the first arm's server")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    arms = [parse_arm(a) for a in (args.arm or ["default="])]
    result = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("arm",)}, "arms": {}}
    with tempfile.TemporaryDirectory(prefix="medmoe-bench-serve-") as tmp:
        for round_ in range(args.rounds):
            for number, (name, src, extra) in enumerate(arms):
                server = start_server(args, extra, src, Path(tmp) / f"{name}-{round_}.log")
                try:
                    measured = load_phase(server, args)
                    measured["load_avg_after"] = os.getloadavg()
                    if args.hostile and round_ == 0 and number == 0:
                        result["hostile"] = {"arm": name, "uploads": hostile_phase(server, args)}
                finally:
                    stop_server(server)
                result["arms"].setdefault(name, []).append(measured)
                print(f"{name} round {round_}: {measured['answers_per_s']} answers/s, {measured['failed']} failed",
                      file=sys.stderr)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
