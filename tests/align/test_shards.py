"""Training MedMoE from tar shards: folders, brace patterns, HTTP, exact resume, 2 processes and 2 nodes."""

import json
from pathlib import Path

import pytest
import torch
from testkit.align import TINY, args_for, crash_and_resume, logged_losses, write_tiny_manifest

from medmoe.align.task import AlignTask, AlignTaskConfig
from medmoe.data.shards import write_shards
from medmoe.train import run_training

WORKER = Path(__file__).with_name("shard_train_worker.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, damage_shard):
    """12 training pairs of the tiny manifest in 6 shards of 2 (the corrupt row is skipped when writing),
    plus a corrupt image member slipped into shard 2 afterwards (a shard damaged in storage)."""
    root = tmp_path_factory.mktemp("shards")
    manifest = write_tiny_manifest(root)
    result = write_shards(manifest, root / "shards", per_shard=2, split="train", shuffle_seed=0)
    assert result.samples == 12 and len(result.shards) == 6
    damage_shard(root / "shards" / "shard-000002.tar", "damaged")
    return root / "shards"


def config(data, **kw):
    return AlignTaskConfig(data=str(data), model="medmoe-nano", overrides=dict(TINY), **kw)


@pytest.mark.timeout(480)
def test_folder_brace_pattern_and_http_train_alike(shards, tmp_path, http_server):
    flags = ("--steps", "3")
    sources = {"folder": shards, "pattern": shards / "shard-{000000..000005}.tar",
               "http": f"{http_server(shards)}/shard-{{000000..000005}}.tar"}
    losses = {}
    for name, source in sources.items():
        result = run_training(AlignTask(config(source)), args_for(tmp_path / name, *flags))
        assert result.steps == 3
        losses[name] = logged_losses(tmp_path / name)
    assert losses["folder"] == losses["pattern"] == losses["http"]


@pytest.mark.timeout(480)
def test_resume_from_shards_gives_the_same_next_losses(shards, tmp_path):
    flags = ("--steps", "7", "--ckpt-every", "3", "--workers", "2")  # 7 steps of 2 cross an epoch of 6
    ref_dir, result, ref, resumed = crash_and_resume(config(shards), tmp_path, flags)
    assert result.resumed_from.name == "step_0000003.pt"
    for step in range(4, 8):
        assert resumed[step] == ref[step], step
    # the damaged member is counted each time it is read (how often depends on the seeded mixing);
    # the resumed run counts as the uninterrupted one
    ref_bad = json.loads((ref_dir / "summary.json").read_text())["bad_samples"]
    assert ref_bad >= 1 and result.bad_samples == ref_bad


def test_cli_rejects_a_missing_shard_pattern(tmp_path, capsys):
    from medmoe.cli.main import main

    code = main(["align", "train", "--data", str(tmp_path / "s-{000..003}.tar"), "--out", str(tmp_path / "r")])
    assert code != 0
    assert "no such file" in capsys.readouterr().err


def _seen(out, ranks):
    return [json.loads((out / f"seen{r}.json").read_text()) for r in range(ranks)]


@pytest.mark.ddp
@pytest.mark.timeout(300)
@pytest.mark.parametrize("pattern", [False, True], ids=["folder", "brace-pattern"])
def test_two_process_torchrun_reads_disjoint_shards_every_sample_once(shards, tmp_path, torchrun, pattern):
    source = shards / "shard-{000000..000005}.tar" if pattern else shards
    # 3 steps x 2 ranks x batch 2 = one epoch of 12
    torchrun(WORKER, source, tmp_path, 3, cwd=Path(__file__).parent, timeout=280)
    rank0, rank1 = _seen(tmp_path, 2)
    assert len(rank0) == len(rank1) == 6 and not set(rank0) & set(rank1)
    assert len(set(rank0 + rank1)) == 12  # the 12 training pairs (metadata index = manifest row)


@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_two_node_simulation_ends_with_identical_parameters(shards, tmp_path, torchrun):
    torchrun(WORKER, shards, tmp_path, 2, cwd=Path(__file__).parent, timeout=280, nodes=2)
    first, second = (torch.load(tmp_path / f"params{r}.pt", weights_only=True) for r in (0, 1))
    initial = dict(AlignTask(config(shards)).build_model().named_parameters())
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(not torch.equal(first[k], initial[k]) for k in first)  # it did train
    rank0, rank1 = _seen(tmp_path, 2)
    assert len(rank0) == len(rank1) == 4 and not set(rank0) & set(rank1)
