"""Shards: writing, reading back the same items, splitting across ranks and workers exactly once."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from testkit.data import make_manifest
from torch.utils.data import DataLoader

from medmoe.cli.main import main
from medmoe.data import shards as shards_module
from medmoe.data.dataset import BadSample, ImageReportDataset, collate_image_report
from medmoe.data.manifest import ManifestRow, read_manifest
from medmoe.data.shards import ShardDataset, write_shards
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.train.data import BatchStream

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sharded(tmp_path):
    path, _ = make_manifest(tmp_path / "src", n=10)
    result = write_shards(path, tmp_path / "shards", per_shard=3)
    return path, tmp_path / "shards", result


def test_write_shards_layout(sharded):
    _, out, result = sharded
    assert [Path(s).name for s in result.shards] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert result.samples == 10 and result.bad == []
    index = json.loads((out / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [3, 3, 3, 1]
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("000000001.json").read())
    assert names[:3] == ["000000000.json", "000000000.png", "000000000.txt"]  # TarWriter: extensions sorted
    assert meta["index"] == 1 and meta["modality"] == "CT" and meta["labels"] == ["label1"]
    assert not list(out.glob("*.tmp"))


def test_shard_items_match_manifest_items(sharded):
    manifest, out, _ = sharded
    from_manifest = ImageReportDataset(manifest, image_size=32)
    from_shards = {item["index"]: item for item in ShardDataset(out, image_size=32)}
    assert sorted(from_shards) == list(range(10))
    for i in range(10):
        a, b = from_manifest[i], from_shards[i]
        # PNG shards hold the reader's output at 8 bits: the source PNGs are 8-bit, so pixels are equal
        assert torch.allclose(a["image"], b["image"], atol=1e-5)
        assert (a["report"], a["modality"], a["labels"]) == (b["report"], b["modality"], b["labels"])
        assert b["path"] == a["path"]


def test_shard_split_filter_and_training_determinism(sharded):
    _, out, _ = sharded
    assert sorted(item["index"] for item in ShardDataset(out, split="train")) == [0, 3, 6, 9]
    a = ShardDataset(out, image_size=24, train=True, seed=5)
    b = ShardDataset(out, image_size=24, train=True, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    first = {i["index"]: i["image"] for i in a}
    second = {i["index"]: i["image"] for i in b}
    assert all(torch.equal(first[k], second[k]) for k in first)
    b.set_epoch(3)
    # training shuffles the shard order by (seed, epoch); evaluation keeps the sorted order
    assert sorted(a.epoch_shards()) == sorted(b.epoch_shards()) == ShardDataset(out).epoch_shards()
    orders = set()
    for epoch in range(8):
        probe = ShardDataset(out, train=True, seed=5)
        probe.set_epoch(epoch)
        assert probe.epoch_shards() == probe.epoch_shards()
        orders.add(tuple(probe.epoch_shards()))
    assert len(orders) > 1
    third = {i["index"]: i["image"] for i in b}
    assert not all(torch.allclose(first[k], third[k]) for k in first)


@pytest.mark.parametrize(("world", "workers"), [(1, 1), (2, 1), (2, 2), (3, 2), (4, 3)])
def test_rank_and_worker_split_covers_every_sample_once(sharded, monkeypatch, world, workers):
    _, out, _ = sharded  # 4 shards: (4, 3) = 12 readers exercises the per-sample stride fallback
    ds = ShardDataset(out, image_size=8, train=True, seed=1)
    ds.set_epoch(1)
    seen = []
    per_rank = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        rank_items = []
        for worker in range(workers):
            info = SimpleNamespace(id=worker, num_workers=workers)
            monkeypatch.setattr(shards_module, "get_worker_info", lambda info=info: info)
            rank_items += [item["index"] for item in ds]
        per_rank.append(len(rank_items))
        seen += rank_items
    assert sorted(seen) == list(range(10))
    assert min(per_rank) > 0, f"a rank got no samples: {per_rank}"  # an idle rank would hang DDP


@pytest.mark.timeout(180)
def test_real_dataloader_workers_split_shards(sharded):
    _, out, _ = sharded
    loader = DataLoader(ShardDataset(out, image_size=16), batch_size=4, num_workers=2, collate_fn=collate_image_report)
    seen = [int(i) for batch in loader for i in batch["index"]]
    assert sorted(seen) == list(range(10))


def test_bad_rows_are_skipped_when_writing_and_bad_members_when_reading(tmp_path):
    path, _ = make_manifest(tmp_path / "src", n=3)
    rows = read_manifest(path) + [ManifestRow(image=str(tmp_path / "gone.png"), report="x")]
    result = write_shards(rows, tmp_path / "out", per_shard=10)
    assert result.samples == 3 and [b.path for b in result.bad] == [str(tmp_path / "gone.png")]
    # a foreign shard: jpg + txt + cls, one sample with a corrupt image, one without text
    shard = tmp_path / "foreign" / "part-0.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for name, data in [
            ("a.jpg", _jpeg(60)), ("a.txt", b"Left effusion."), ("a.cls", b"2"),
            ("b.jpg", b"\xff\xd8\xff broken"), ("b.txt", b"Broken image."),
            ("c.png", _png(10)), ("c.txt", b""),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    items = list(ShardDataset(shard, image_size=16))
    good = [i for i in items if not isinstance(i, BadSample)]
    bad = [i for i in items if isinstance(i, BadSample)]
    assert [g["labels"] for g in good] == [["2"]] and good[0]["report"] == "Left effusion."
    assert sorted(b.reason.split(":")[0] for b in bad) == ["CorruptFileError", "empty report after cleaning"]
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(3000))
    (only,) = list(ShardDataset(garbage))
    assert isinstance(only, BadSample) and "unreadable tar shard" in only.reason


def _jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_cli_shard(tmp_path, capsys):
    path, _ = make_manifest(tmp_path / "src", n=5)
    out = tmp_path / "out"
    argv = ["data", "shard", str(path), "--out", str(out), "--per-shard", "2", "--split", "train", "--format", "jpg",
            "--max-size", "16", "--no-progress"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == {"out": str(out), "shards": 1, "samples": 2, "bad": 0}
    with tarfile.open(out / "shard-000000.tar") as tar:
        image = Image.open(io.BytesIO(tar.extractfile("000000000.jpg").read()))
        assert max(image.size) == 16


WORKER = """
import json, sys
import torch.distributed as dist
from medmoe.data.shards import ShardDataset
dist.init_process_group("gloo")
ds = ShardDataset(sys.argv[1], image_size=8)
indices = [item["index"] for item in ds]
with open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w") as fh:
    json.dump(indices, fh)
dist.barrier()  # no rank closes its sockets while the other still talks
dist.destroy_process_group()
"""


@pytest.mark.ddp
@pytest.mark.timeout(180)
def test_two_process_ddp_split(sharded, tmp_path, torchrun):
    _, out, _ = sharded
    worker = tmp_path / "shard_worker.py"
    worker.write_text(WORKER)
    torchrun(str(worker), str(out), str(tmp_path), timeout=170)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 and rank1 and not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == list(range(10))


def _stream_batches(source, *, world, rank, workers, epochs=1, **kw):
    stream = BatchStream(ShardDataset(source, image_size=8, train=True, seed=2, **kw), collate_image_report,
                         batch_size=2, rank=rank, world_size=world, workers=workers, seed=2)
    try:
        out = []
        for _ in range(epochs):
            out.append([next(stream)["index"].tolist() for _ in range(stream.batches_per_epoch)])
        return out
    finally:
        stream.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 0), (1, 2), (2, 2)])
def test_training_epoch_reads_every_sample_once_split_over_ranks_and_workers(tmp_path, world, workers):
    path, _ = make_manifest(tmp_path / "src", n=16)
    write_shards(path, tmp_path / "shards", per_shard=2)  # 8 equal shards
    per_rank = [_stream_batches(tmp_path / "shards", world=world, rank=r, workers=workers, epochs=2)
                for r in range(world)]
    for epoch in range(2):
        seen = [i for rank in per_rank for batch in rank[epoch] for i in batch]
        assert sorted(seen) == list(range(16)), (epoch, seen)
        assert len({len(rank[epoch]) for rank in per_rank}) == 1  # every rank takes the same number of steps
    assert per_rank[0][0] != per_rank[0][1]  # the shard order and the mixing buffer change with the epoch


def _shards_with_a_corrupt_member(tmp_path, damage_shard):
    path, _ = make_manifest(tmp_path / "src", n=12)
    out = tmp_path / "shards"
    write_shards(path, out, per_shard=3)
    damage_shard(out / "shard-000001.tar")
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resume_is_exact_per_sample_with_a_corrupt_member(tmp_path, workers, damage_shard):
    out = _shards_with_a_corrupt_member(tmp_path, damage_shard)
    # index.json says 3 samples in that shard; it has 4: the broken one fills no slot, the next sample does
    make = lambda **kw: BatchStream(  # noqa: E731
        ShardDataset(out, image_size=8, train=True, seed=4), collate_image_report, batch_size=2, workers=workers,
        seed=4, **kw)
    reference = make()
    batches, bad = [], []
    for _ in range(reference.batches_per_epoch + 3):  # into the second epoch
        batch = next(reference)
        bad += batch["bad"]
        batches.append((batch["index"].tolist(), batch["images"].clone()))
    assert len({len(b[0]) for b in batches}) == 1  # batches stay full
    assert bad and all("shard-000001.tar#broken" in b.path for b in bad)
    for stop in (1, 3, reference.batches_per_epoch + 1):
        first = make()
        for _ in range(stop):
            next(first)
        epoch, position, consumed = first.epoch, first.position, dict(first.consumed)
        first.close()
        resumed = make(epoch=epoch, position=position, consumed=consumed)
        for expected_index, expected_images in batches[stop:stop + 3]:
            batch = next(resumed)
            assert batch["index"].tolist() == expected_index, stop
            assert torch.equal(batch["images"], expected_images)
        resumed.close()
    reference.close()


@pytest.mark.timeout(120)
def test_shards_over_http_and_brace_patterns_read_as_from_disk(tmp_path, http_server):
    root, url = tmp_path, http_server(tmp_path)
    path, _ = make_manifest(root / "src", n=7)
    write_shards(path, root / "shards", per_shard=3)
    local = ShardDataset(root / "shards", image_size=16)
    pattern = ShardDataset(str(root / "shards" / "shard-{000000..000002}.tar"), image_size=16)
    remote = ShardDataset(f"{url}/shards/shard-{{000000..000002}}.tar", image_size=16)
    assert remote.shards[0] == f"{url}/shards/shard-000000.tar"
    assert local.counts == pattern.counts == remote.counts == [3, 3, 1]  # remote counts from index.json
    items = [{i["index"]: i for i in ds} for ds in (local, pattern, remote)]
    assert sorted(items[0]) == list(range(7)) and items[0].keys() == items[1].keys() == items[2].keys()
    for k in items[0]:
        assert torch.equal(items[0][k]["image"], items[2][k]["image"])
        assert items[0][k]["report"] == items[2][k]["report"]
    missing = ShardDataset(f"{url}/shards/shard-000009.tar", image_size=16, shuffle=False)
    with pytest.raises(CorruptFileError, match="shard-000009"):
        missing.counts  # noqa: B018 - counting reads the shard (no index entry for it)


def test_shard_source_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file"):
        ShardDataset(str(tmp_path / "shard-{000000..000002}.tar"))
    path, _ = make_manifest(tmp_path / "src", n=3)
    write_shards(path, tmp_path / "shards", per_shard=3)
    ds = ShardDataset(tmp_path / "shards", image_size=8, train=True)
    with pytest.raises(InvalidInputError, match="less than one batch"):
        ds.configure(4, rank=0, world_size=1)


@pytest.mark.parametrize("max_size", [-5, 0])
def test_a_non_positive_max_size_is_refused_before_writing(tmp_path, capsys, max_size):
    """`data shard --max-size -5` (or 0) fails naming max_size and writes no shard."""
    path, _ = make_manifest(tmp_path / "src", n=2)
    code = main(["data", "shard", str(path), "--out", str(tmp_path / "out"), "--max-size", str(max_size)])
    assert code != 0 and "max_size must be a positive" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.tar"))
