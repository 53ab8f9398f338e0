"""MedMoE trained by 2 gloo ranks (torchrun) from shards: what a first multi-GPU run must get right."""

import json
from pathlib import Path

import pytest
import torch
from testkit.align import write_tiny_manifest

from medmoe.cli.main import main as medmoe_main
from medmoe.data.shards import write_shards
from medmoe.train.checkpoint import list_checkpoints

WORKER = Path(__file__).with_name("ddp_run_worker.py")


def _shards(root: Path, per_shard: int, n_per_modality: int) -> Path:
    manifest = write_tiny_manifest(root, n_per_modality=n_per_modality, bad=False)
    write_shards(manifest, root / "train", per_shard=per_shard, split="train", shuffle_seed=0)
    return manifest


@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_two_process_validation_equals_align_eval_of_the_saved_model(tmp_path, torchrun):
    manifest = _shards(tmp_path, per_shard=4, n_per_modality=8)  # 12 training pairs in 3 shards
    write_shards(manifest, tmp_path / "val", per_shard=6, split="train", shuffle_seed=1)  # 2 shards: one per rank
    torchrun(str(WORKER), "validate", str(tmp_path), timeout=280)
    validation = json.loads((tmp_path / "run" / "summary.json").read_text())["validation"]

    torch.set_num_threads(1)
    medmoe_main(["align", "eval", "--model", str(tmp_path / "run" / "model"), "--data", str(tmp_path / "val"),
                 "--split", "train", "--probe-split", "", "--no-figures", "--no-progress",
                 "--out", str(tmp_path / "eval.json")])
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["n"] == 12
    for direction in ("image_to_text", "text_to_image"):
        for k in ("R@1", "R@5"):
            assert validation[f"{direction}/{k}"] == pytest.approx(evaluated["retrieval"][direction][k], abs=1e-6)
    assert validation["routing/agreement"] == pytest.approx(evaluated["routing"]["agreement"], abs=1e-6)


@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_a_rank_whose_shard_breaks_stops_every_rank_with_one_error_and_a_checkpoint(tmp_path, torchrun):
    _shards(tmp_path, per_shard=12, n_per_modality=14)  # 24 training pairs in 2 shards of 12
    torchrun(str(WORKER), "bad-shard", str(tmp_path), timeout=280)
    errors = [json.loads((tmp_path / f"rank{r}.json").read_text())["error"] for r in range(2)]
    assert errors[0] == errors[1] and errors[0] is not None
    assert "training stopped after step 6" in errors[0] and "no readable sample" in errors[0]
    assert errors[0].count("CorruptFileError") == 1  # the one rank that read the broken shard
    assert [step for step, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [6]
