"""Shards that mispair samples or claim gigabytes they do not hold.

Sparse, special and oversized tar members are refused from their headers as named CorruptFileErrors that
the shard readers skip; the WebDataset import gives every sample its own file whatever the shard layout.
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from medmoe.data.adapters import import_source
from medmoe.data.dataset import BadSample
from medmoe.data.shards import ShardDataset, iter_tar_samples
from medmoe.errors import CorruptFileError

pytestmark = pytest.mark.timeout(120)


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _octal(value: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, value)) + b"\x00"


def _sparse_member(name: str, real_size: int, stored: bytes = b"x" * 512) -> bytes:
    """A GNU sparse member (type 'S', its map in the header) storing ``stored`` but claiming ``real_size`` bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(stored)
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = _octal(0, 12)  # one region: offset 0 ...
    header[398:410] = _octal(len(stored), 12)  # ... of the stored bytes
    header[483:495] = _octal(real_size, 12)  # the size the member claims once expanded
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header[:512])
    return bytes(header) + stored + b"\x00" * (-len(stored) % 512)


def _regular(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\x00" * (-len(data) % 512)


def _shard(path, *parts: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts) + b"\x00" * 1024)
    return path


def _good(key: str, value: int = 10) -> bytes:
    return _regular(f"{key}.png", _png(value)) + _regular(f"{key}.txt", f"report {key}".encode())


def test_sparse_member_claiming_gigabytes_is_refused_before_any_allocation(tmp_path):
    """A 10 KB tar whose sparse member claims 1 GiB is refused from its header, without reading it: the
    sample before it comes back and iter_tar_samples' peak traced memory stays under 16 MiB."""
    shard = _shard(tmp_path / "bomb.tar", _good("a"), _sparse_member("b.png", 2**30))
    tracemalloc.start()
    try:
        samples = []
        with pytest.raises(CorruptFileError, match=r"bomb\.tar: member 'b\.png' refused: a GNU sparse file"):
            for sample in iter_tar_samples(str(shard)):
                samples.append(sample)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [key for key, _ in samples] == ["a"]  # what came before the damage was read
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_special_members_are_refused_and_directories_skipped(tmp_path):
    link = tarfile.TarInfo("c.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    folder = tarfile.TarInfo("d")
    folder.type = tarfile.DIRTYPE
    shard = _shard(tmp_path / "links.tar", folder.tobuf(format=tarfile.GNU_FORMAT), _good("d/a"),
                   link.tobuf(format=tarfile.GNU_FORMAT))
    with pytest.raises(CorruptFileError, match=r"member 'c\.png' refused: a symbolic link"):
        list(iter_tar_samples(str(shard)))
    fifo = tarfile.TarInfo("e.png")
    fifo.type = tarfile.FIFOTYPE
    shard = _shard(tmp_path / "fifo.tar", fifo.tobuf(format=tarfile.GNU_FORMAT))
    with pytest.raises(CorruptFileError, match="a FIFO"):
        list(iter_tar_samples(str(shard)))


def test_member_size_cap_from_argument_and_environment(tmp_path, monkeypatch):
    big = _regular("a.png", b"\x00" * 300_000)
    shard = _shard(tmp_path / "big.tar", big)
    assert len(list(iter_tar_samples(str(shard)))) == 1  # the default (512 MiB) lets it through
    with pytest.raises(CorruptFileError, match=r"300,000 bytes, over the member limit of 100,000 .*MEDMOE_MAX_MEMBER"):
        list(iter_tar_samples(str(shard), max_member_bytes=100_000))
    monkeypatch.setenv("MEDMOE_MAX_MEMBER_BYTES", "1e5")
    with pytest.raises(CorruptFileError, match="over the member limit of 100,000"):
        list(iter_tar_samples(str(shard)))


def test_every_tar_error_is_a_named_corrupt_file_error(tmp_path):
    shard = _shard(tmp_path / "ok.tar", _good("a"), _good("b"))
    data = shard.read_bytes()
    for name, damaged in (("truncated.tar", data[:700]), ("noise.tar", b"\x1f\x8b" + bytes(range(256)) * 4),
                          ("flipped.tar", data[:148] + b"9" * 8 + data[156:])):
        path = tmp_path / name
        path.write_bytes(damaged)
        with pytest.raises(CorruptFileError, match=name.replace(".", r"\.")):
            list(iter_tar_samples(str(path)))


def test_shard_dataset_and_wds_import_skip_a_bomb_shard(tmp_path):
    """A shard whose sparse member claims 3 GiB is one bad sample to ShardDataset, which still loads the three
    good samples, and one unreadable shard to `data import wds`, which still imports the other shard's two."""
    root = tmp_path / "shards"
    _shard(root / "shard-000000.tar", _good("a", 20), _good("b", 30))
    _shard(root / "shard-000001.tar", _good("c", 40), _sparse_member("d.png", 3 * 2**30))
    items = list(ShardDataset(root, image_size=8))
    bad = [item for item in items if isinstance(item, BadSample)]
    assert len(items) - len(bad) == 3 and len(bad) == 1 and "sparse" in bad[0].reason
    result = import_source("wds", root, extract_dir=tmp_path / "out")
    assert sorted(row.extra["key"] for row in result.rows) == ["a", "b"]
    assert len(result.skipped["unreadable shard"]) == 1


def test_wds_import_rows_point_to_their_own_images(tmp_path):
    """Two shards named alike in different folders, keys sharing a base name and a key repeated later in a tar:
    one row per distinct sample, each with its own file, and every row opens the image its own sample carried."""
    root = tmp_path / "shards"
    value = iter(range(10, 250, 10))
    expected = {}
    for split in ("train", "val"):
        parts = []
        for key in ("a/dup", "b/dup", "dup", "a/dup"):
            v = next(value)
            parts.append(_good(key, v))
            expected.setdefault((split, key), v)
        _shard(root / split / "shard-000000.tar", *parts)
    result = import_source("wds", root, extract_dir=tmp_path / "out")
    assert len(result.rows) == 6 and len({row.image for row in result.rows}) == 6
    for row in result.rows:
        pixels = np.asarray(Image.open(row.image))
        assert int(pixels[0, 0]) == expected[(row.split, row.extra["key"])], row
    assert {row.split for row in result.rows} == {"train", "val"}


def test_wds_import_never_writes_two_samples_to_one_file_across_shards(tmp_path):
    """Shard `train.tar` with key `shard-000000/a` and shard `train/shard-000000.tar` with key `a` both map to
    `train/shard-000000/a.png`: one is imported, the other skipped, and the file holds the imported one's image."""
    root = tmp_path / "shards"
    _shard(root / "train.tar", _good("shard-000000/a", 50))
    _shard(root / "train" / "shard-000000.tar", _good("a", 60))
    result = import_source("wds", root, extract_dir=tmp_path / "out")
    assert len(result.rows) == 1 and len(result.skipped["output path taken by another shard's sample"]) == 1
    row = result.rows[0]
    assert int(np.asarray(Image.open(row.image))[0, 0]) == {"shard-000000/a": 50, "a": 60}[row.extra["key"]]
