"""Fuzzing the tar shard reader and the manifest reader: damaged shards and manifests end as
medmoe errors (or bad samples / malformed rows), never another exception, with bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testkit.fuzz import FUZZ, check_outcome, lowered_limits, mutated, peak_growth, shard_seeds

from medmoe.data.check import check_manifest
from medmoe.data.dataset import BadSample
from medmoe.data.manifest import read_manifest, scan_manifest
from medmoe.data.shards import ShardDataset, iter_tar_samples

pytestmark = pytest.mark.timeout(300)

SHARDS = shard_seeds()
MANIFESTS = {
    "m.csv": b'image,report,modality,labels,split\na.png,"FINDINGS: clear, no effusion.",xray,No Finding|Edema,train\n'
             b"b.png,Normal heart.,ct,,test\n",
    "m.jsonl": b'{"image": "a.png", "report": "FINDINGS: clear.", "labels": ["Edema"], "split": "val"}\n'
               b'{"image": "b.png", "report": "x", "modality": "mri"}\n',
}


@pytest.fixture(scope="module", autouse=True)
def _limits():
    with lowered_limits():
        yield


@FUZZ
@given(sample=mutated(SHARDS))
def test_shard_reader_fails_only_with_medmoe_errors_and_bounded_memory(tmp_path, sample):
    name, data = sample
    shard = tmp_path / "shards" / "shard-000000.tar"
    shard.parent.mkdir(exist_ok=True)
    shard.write_bytes(data)
    check_outcome(*peak_growth(lambda: list(iter_tar_samples(str(shard)))), f"iter_tar_samples({name})")

    def read_dataset():
        for item in ShardDataset(shard.parent, image_size=16):
            assert isinstance(item, BadSample | dict)

    check_outcome(*peak_growth(read_dataset), f"ShardDataset({name})")


lines = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.sampled_from(['{"image": "c.png", "report": 3}', '{"image": ["x"], "report": ""}', "[]", "null",
                     '{"image": "c.png", "report": "r", "labels": {"a": 1}}', "a.png,x,y,z,w,v", '"unclosed,',
                     "[" * 5000, '{"image": "c.png", "report": "' + "x" * 200_000 + '"}']),
)


@FUZZ
@given(sample=mutated(MANIFESTS), extra=st.lists(lines, max_size=4))
def test_manifest_reader_fails_only_with_medmoe_errors_and_bounded_memory(tmp_path, sample, extra):
    name, data = sample
    path = tmp_path / name
    path.write_bytes(data + "\n".join(extra).encode("utf-8", errors="surrogateescape"))
    check_outcome(*peak_growth(lambda: read_manifest(path)), f"read_manifest({name})")
    check_outcome(*peak_growth(lambda: scan_manifest(path)), f"scan_manifest({name})")
    check_outcome(*peak_growth(lambda: check_manifest(path, read_images=False)), f"check_manifest({name})")
