"""Shards and WebDataset: medmoe's shards read with a bare WebDataset pipeline, the grouping medmoe shares
with it, and the member checks that WebDataset's own tar iterator does not make."""

from __future__ import annotations

import importlib.util
import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from testkit.data import make_manifest, write_tar
from webdataset.tariterators import tar_file_iterator

from medmoe.data import shard_files
from medmoe.data.shard_files import iter_tar_samples, scan_shard, shard_sample_counts, write_shards
from medmoe.data.shards import ShardDataset
from medmoe.errors import CorruptFileError

pytestmark = pytest.mark.timeout(120)


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_bare_webdataset_pipeline_reads_the_samples_medmoe_wrote(tmp_path):
    manifest, _ = make_manifest(tmp_path / "src", n=7)
    result = write_shards(manifest, tmp_path / "shards", per_shard=3, image_format="jpg")
    bare = {sample["__key__"]: sample for sample in wds.WebDataset(result.shards, shardshuffle=False)}
    ours = {key: members for url in result.shards for key, members in iter_tar_samples(url)}
    assert len(ours) == 7 and sorted(bare) == sorted(ours)
    for key, members in ours.items():
        assert sorted(members) == ["jpg", "json", "txt"]
        assert {ext: bare[key][ext] for ext in members} == members
    image, meta = next(iter(wds.WebDataset(result.shards[0], shardshuffle=False).decode("pil").to_tuple("jpg", "json")))
    key = f"{meta['index']:09d}"
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(ours[key]["jpg"])).convert("RGB")))


def test_a_repeated_extension_starts_a_new_sample_under_the_same_key(tmp_path):
    shard = write_tar(tmp_path / "repeat.tar", [("a.png", _png(1)), ("a.txt", b"first"), ("a.txt", b"second"),
                                           ("b.png", _png(2)), ("b.txt", b"third")])
    samples = list(iter_tar_samples(str(shard)))
    assert [(key, sorted(members)) for key, members in samples] == [("a", ["png", "txt"]), ("a", ["txt"]),
                                                                   ("b", ["png", "txt"])]
    assert samples[1][1]["txt"] == b"second"
    assert len(scan_shard(str(shard))) == 3  # counting from headers groups alike
    with pytest.raises(ValueError, match="duplicate file name"):  # WebDataset alone loses the rest of the shard
        list(wds.WebDataset(str(shard), shardshuffle=False))


def test_webdatasets_tar_iterator_expands_a_sparse_member_that_medmoe_refuses_from_its_header(tmp_path):
    spec = importlib.util.spec_from_file_location("hostile_shards", Path(__file__).with_name("test_hostile_shards.py"))
    hostile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hostile)  # its tar builders: a GNU sparse member
    shard = hostile._shard(tmp_path / "bomb.tar", hostile._good("a"), hostile._sparse_member("b.png", 32 * 2**20))
    tracemalloc.start()
    try:
        with shard.open("rb") as stream:
            sizes = {sample["fname"]: len(sample["data"]) for sample in tar_file_iterator(stream)}
        wds_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with pytest.raises(CorruptFileError, match="a GNU sparse file"):
            list(iter_tar_samples(str(shard)))
        our_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sizes["b.png"] == 32 * 2**20 and wds_peak > 32 * 2**20
    assert our_peak < 4 * 2**20, f"{our_peak / 2**20:.1f} MiB"


def test_an_interrupted_write_keeps_the_complete_shards_and_no_half_one(tmp_path, monkeypatch):
    manifest, _ = make_manifest(tmp_path / "src", n=8)
    encode, calls = shard_files._encode, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return encode(*args, **kwargs)

    monkeypatch.setattr(shard_files, "_encode", interrupted)
    out = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        write_shards(manifest, out, per_shard=3)
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar"]
    assert shard_sample_counts([str(out / "shard-000000.tar")]) == [3]


def test_a_blank_split_in_another_tools_shard_is_read_and_counted_as_no_split(tmp_path):
    # WebDataset shards written by other tools may carry "split": "" in a sample's .json
    manifest, _ = make_manifest(tmp_path / "src", n=4)
    url = write_shards(manifest, tmp_path / "ours", per_shard=4, image_format="png").shards[0]
    splits = ["train", "", None, "test"]
    members = []
    for (key, sample), split in zip(iter_tar_samples(url), splits, strict=True):
        meta = {k: v for k, v in json.loads(sample["json"]).items() if k != "split"}
        if split is not None:
            meta["split"] = split
        members += [(f"{key}.png", sample["png"]), (f"{key}.txt", sample["txt"]), (f"{key}.json", json.dumps(meta).encode())]
    shard = str(write_tar(tmp_path / "other.tar", members))
    read = [item["index"] for item in ShardDataset(shard, split="train")]
    assert len(read) == 3 == shard_sample_counts([shard], "train")[0]
