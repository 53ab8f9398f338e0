"""Reading tar shards: medmoe's checked member reader against a bare WebDataset pipeline, side by side.

Writes ``--samples`` samples (a ``--member-kb`` KB image member of random bytes, a report, JSON metadata)
in shards of ``--per-shard`` with WebDataset's ``TarWriter``, as ``write_shards`` lays them out, then
times full passes over the shards, the two readers taking turns, the fastest of ``--repeats`` passes
counting (files in the page cache after the first pass):

* ``medmoe``: :func:`medmoe.data.shard_files.iter_tar_samples`, each member's tar header checked before its
  data is read, members grouped by WebDataset's ``group_by_keys``;
* ``webdataset``: ``webdataset.WebDataset(urls, shardshuffle=False)``, i.e. ``url_opener``,
  ``tar_file_expander`` and ``group_by_keys``, with no decoding.

It then reads one shard holding a GNU sparse member that claims ``--sparse-mib`` MiB while storing 512
bytes, with each reader, and reports the peak Python allocation (tracemalloc): WebDataset's tar iterator
expands the member in memory, medmoe refuses it from its header.

    nice python benchmarks/bench_shards.py --samples 2000 --member-kb 64

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import webdataset as wds

from medmoe.data.shard_files import iter_tar_samples
from medmoe.errors import CorruptFileError


def write_corpus(root: Path, samples: int, per_shard: int, member_kb: int) -> list[str]:
    """Shards of ``samples`` samples (jpg-named random bytes, txt, json), ``per_shard`` each."""
    rng = random.Random(0)
    urls = []
    for first in range(0, samples, per_shard):
        url = str(root / f"shard-{first // per_shard:06d}.tar")
        with wds.TarWriter(url, encoder=False) as writer:
            for index in range(first, min(first + per_shard, samples)):
                writer.write({"__key__": f"{index:09d}", "jpg": rng.randbytes(member_kb * 1024),
                              "txt": f"FINDINGS: sample {index}. IMPRESSION: none.".encode(),
                              "json": json.dumps({"index": index, "split": "train"}).encode()})
        urls.append(url)
    return urls


def read_medmoe(urls: list[str]) -> int:
    return sum(len(members["jpg"]) for url in urls for _, members in iter_tar_samples(url))


def read_webdataset(urls: list[str]) -> int:
    return sum(len(sample["jpg"]) for sample in wds.WebDataset(urls, shardshuffle=False))


def timed_passes(urls: list[str], repeats: int) -> dict[str, float]:
    """Fastest pass of each reader in seconds, the readers taking turns."""
    readers = {"medmoe": read_medmoe, "webdataset": read_webdataset}
    best = dict.fromkeys(readers, float("inf"))
    sizes = {}
    for _ in range(repeats):
        for name, read in readers.items():
            start = time.perf_counter()
            sizes[name] = read(urls)
            best[name] = min(best[name], time.perf_counter() - start)
    if len(set(sizes.values())) != 1:
        raise RuntimeError(f"the readers read different bytes: {sizes}")
    return best


def sparse_shard(path: Path, claimed: int) -> Path:
    """A shard with one good sample, then a GNU sparse member claiming ``claimed`` bytes, storing 512."""
    stored = b"x" * 512
    good = b""
    for name, data in (("a.jpg", b"\xff\xd8 image"), ("a.txt", b"report")):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        good += info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\x00" * (-len(data) % 512)
    info = tarfile.TarInfo("b.jpg")
    info.size = len(stored)
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = b"%011o\x00" % 0
    header[398:410] = b"%011o\x00" % len(stored)
    header[483:495] = b"%011o\x00" % claimed
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header[:512])
    path.write_bytes(good + bytes(header) + stored + b"\x00" * 1024)
    return path


def peak_mib(read) -> tuple[float, str]:
    """Peak traced allocation of ``read()`` in MiB, and how it ended."""
    tracemalloc.start()
    try:
        outcome = f"read {read()} bytes"
    except CorruptFileError as err:
        outcome = f"CorruptFileError: {str(err).split(': ', 1)[1]}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return round(peak / 2**20, 2), outcome


def sparse_peaks(root: Path, claimed_mib: int) -> dict[str, Any]:
    url = str(sparse_shard(root / "sparse.tar", claimed_mib * 2**20))

    def webdataset_members() -> int:  # the tar iterator of WebDataset's pipeline, without its grouping
        with open(url, "rb") as stream:
            return sum(len(s["data"]) for s in wds.tariterators.tar_file_iterator(stream))

    medmoe_peak, medmoe_outcome = peak_mib(lambda: read_medmoe([url]))
    wds_peak, wds_outcome = peak_mib(webdataset_members)
    return {"claimed_mib": claimed_mib, "medmoe_peak_mib": medmoe_peak, "medmoe": medmoe_outcome,
            "webdataset_peak_mib": wds_peak, "webdataset": wds_outcome}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--member-kb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparse-mib", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        urls = write_corpus(root, args.samples, args.per_shard, args.member_kb)
        megabytes = sum(os.path.getsize(u) for u in urls) / 1e6
        seconds = timed_passes(urls, args.repeats)
        sparse = sparse_peaks(root, args.sparse_mib)
    rates = {name: {"samples_per_s": round(args.samples / s, 1), "mb_per_s": round(megabytes / s, 1)}
             for name, s in seconds.items()}
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "webdataset": wds.__version__},
        "corpus": {"samples": args.samples, "shards": len(urls), "megabytes": round(megabytes, 1),
                   "member_kb": args.member_kb, "repeats": args.repeats},
        "read": rates,
        "medmoe_over_webdataset": round(seconds["webdataset"] / seconds["medmoe"], 3),
        "sparse_member": sparse,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
