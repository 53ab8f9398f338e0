"""The training loop on a tiny real task: learning, run directory, checkpoints, resume, bad samples."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file
from testkit.train import ToyTask, train_args

from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.train import (
    NonFiniteLossError,
    TrainingInterrupted,
    find_latest_checkpoint,
    load_checkpoint,
    run_training,
)
from medmoe.train import checkpoint as ckpt_mod
from medmoe.train.checkpoint import REQUIRED_KEYS, checkpoint_dir
from medmoe.train.logs import read_metrics

# Resume scenario: 30 samples, batches of 4, 2 micro-batches per step -> 7 batches per epoch, so the
# checkpoint at step 4 (8 micro-batches) sits one batch into epoch 1.
RESUME_FLAGS = ("--steps", "12", "--accum-steps", "2", "--ckpt-every", "4", "--keep-ckpts", "3")


def resume_task(**kw) -> ToyTask:
    return ToyTask(n=30, **kw)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run that resumed runs must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference")
    result = run_training(resume_task(), train_args(out, *RESUME_FLAGS))
    return out, result


def loss_rows(run_dir) -> dict[int, dict[str, float]]:
    rows = {}
    for row in read_metrics(run_dir / "metrics.jsonl"):
        if "train/loss" in row:
            assert row["step"] not in rows, f"step {row['step']} logged twice"
            rows[row["step"]] = {k: v for k, v in row.items() if k.endswith("loss")}
    return rows


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.timeout(60)
def test_loss_decreases_and_run_directory_is_complete(tmp_path, caplog):
    task = ToyTask()
    with caplog.at_level(logging.WARNING, logger="medmoe.train"):
        result = run_training(task, train_args(tmp_path, "--steps", "40", "--batch-size", "8",
                                               "--ckpt-every", "15", "--keep-ckpts", "2"))
    losses = [row["train/ce_loss"] for row in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10

    # Checkpoints at 15, 30, 40; only the newest two kept; nothing temporary left behind.
    files = sorted(p.name for p in checkpoint_dir(tmp_path).iterdir())
    assert files == ["step_0000030.pt", "step_0000040.pt"]
    state = load_checkpoint(checkpoint_dir(tmp_path) / "step_0000040.pt")
    assert set(REQUIRED_KEYS) <= set(state)
    assert state["step"] == 40 and isinstance(state["rng"], list) and len(state["rng"]) == 1
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}

    # The exported model holds the final weights.
    exported = final_weights(tmp_path)
    assert exported.keys() == state["model"].keys()
    assert all(torch.equal(exported[k], state["model"][k]) for k in exported)

    # Bad samples: every one the task's collate saw is counted and logged with path and reason.
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["bad_samples"] == len(task.bad_seen) == result.bad_samples > 0
    assert summary["steps"] == 40 and summary["nonfinite_steps"] == 0 and summary["samples_per_s"] > 0
    assert summary["final_losses"]["loss"] == pytest.approx(result.final_losses["loss"])
    logged = [r.getMessage() for r in caplog.records if "bad sample" in r.getMessage()]
    assert len(logged) == len(task.bad_seen)
    assert any("/data/toy/item_003.npy" in m and "truncated file" in m for m in logged)

    assert (tmp_path / "config.yaml").read_text().count("steps: 40") == 1
    tb_files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert tb_files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(tmp_path / "tb")).Reload().Tags()["scalars"])
    assert {"train/loss", "train/ce_loss", "train/margin_loss", "train/lr", "train/usage/2"} <= tags


@pytest.mark.timeout(60)
def test_resume_after_crash_reproduces_the_uninterrupted_run(reference_run, tmp_path):
    ref_dir, ref = reference_run
    # The crash hits micro-batch 13, i.e. step 7: the newest checkpoint is step 4.
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(resume_task(crash_at_call=13), train_args(tmp_path, *RESUME_FLAGS))
    state = find_latest_checkpoint(checkpoint_dir(tmp_path))[1]
    assert (state["step"], state["epoch"], state["position"]) == (4, 1, 1)  # resumes mid-epoch

    result = run_training(resume_task(), train_args(tmp_path, *RESUME_FLAGS, "--resume", "latest"))
    assert result.resumed_from.name == "step_0000004.pt"
    ref_rows, rows = loss_rows(ref_dir), loss_rows(tmp_path)
    for step in range(5, 10):  # the next 5 logged losses, compared exactly
        assert rows[step] == ref_rows[step], f"step {step}"
    assert rows == ref_rows  # and the whole log reads as one uninterrupted run
    ref_w, w = final_weights(ref_dir), final_weights(tmp_path)
    assert all(torch.equal(ref_w[k], w[k]) for k in ref_w)
    assert result.bad_samples == ref.bad_samples


@pytest.mark.timeout(60)
def test_sigterm_writes_a_checkpoint_and_resume_is_exact(reference_run, tmp_path):
    ref_dir, _ = reference_run
    with pytest.raises(TrainingInterrupted) as info:
        run_training(resume_task(sigterm_at_call=11), train_args(tmp_path, *RESUME_FLAGS))
    assert info.value.step == 6
    assert info.value.checkpoint.name == "step_0000006.pt" and info.value.checkpoint.is_file()
    run_training(resume_task(), train_args(tmp_path, *RESUME_FLAGS, "--resume", "latest"))
    assert loss_rows(tmp_path) == loss_rows(ref_dir)


@pytest.mark.timeout(60)
def test_corrupt_checkpoint_is_rejected_and_latest_falls_back(reference_run, tmp_path, caplog):
    ref_dir, _ = reference_run
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    ckdir = checkpoint_dir(run_dir)
    assert [p.name for p in sorted(ckdir.iterdir())] == ["step_0000004.pt", "step_0000008.pt", "step_0000012.pt"]
    newest = ckdir / "step_0000012.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    with pytest.raises(CorruptFileError, match="step_0000012.pt"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="medmoe.train"):
        path, state = find_latest_checkpoint(ckdir)
    assert path.name == "step_0000008.pt" and state["step"] == 8
    assert any("step_0000012.pt" in r.getMessage() for r in caplog.records)

    with pytest.raises(CorruptFileError, match="step_0000012.pt"):
        run_training(resume_task(), train_args(run_dir, *RESUME_FLAGS, "--resume", str(newest)))
    result = run_training(resume_task(), train_args(run_dir, *RESUME_FLAGS, "--resume", "latest"))
    assert result.resumed_from.name == "step_0000008.pt"
    assert loss_rows(run_dir) == loss_rows(ref_dir)

    not_ours = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, not_ours)
    with pytest.raises(CorruptFileError, match="not a medmoe training checkpoint"):
        load_checkpoint(not_ours)
    with pytest.raises(InvalidInputError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.timeout(30)
def test_checkpoint_write_is_atomic(reference_run, tmp_path, monkeypatch):
    ref_dir, _ = reference_run
    state = load_checkpoint(checkpoint_dir(ref_dir) / "step_0000004.pt")
    target = tmp_path / "checkpoints" / "step_0000005.pt"

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.save_checkpoint(state, target)
    assert list(target.parent.iterdir()) == []  # neither the final name nor a temporary file
    monkeypatch.undo()

    # A temporary file left by a killed process is removed when the next run starts.
    stale = target.parent / ".tmp-step_0000009.pt.12345"
    stale.write_bytes(b"junk")
    assert ckpt_mod.remove_stale_temporaries(target.parent) == [stale]
    ckpt_mod.save_checkpoint(state, target)
    assert [p.name for p in target.parent.iterdir()] == ["step_0000005.pt"]
    assert load_checkpoint(target)["step"] == 4


@pytest.mark.timeout(30)
def test_fresh_run_refuses_a_directory_with_checkpoints(reference_run, tmp_path):
    ref_dir, _ = reference_run
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    with pytest.raises(InvalidInputError, match="--resume latest"):
        run_training(resume_task(), train_args(run_dir, *RESUME_FLAGS))


@pytest.mark.timeout(30)
def test_nonfinite_steps_are_skipped_counted_and_abort_when_persistent(tmp_path):
    result = run_training(ToyTask(nan_at_calls=(3,)), train_args(tmp_path / "a", "--steps", "5"))
    assert result.nonfinite_steps == 1
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert rows[2]["train/loss"] is None and rows[3]["train/loss"] is not None
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["nonfinite_steps"] == 1

    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        run_training(ToyTask(nan_always=True), train_args(tmp_path / "b", "--steps", "10", "--max-nonfinite-steps", "3"))


@pytest.mark.timeout(30)
def test_skipped_step_leaves_weights_unchanged(tmp_path):
    run_training(ToyTask(nan_at_calls=(2,)), train_args(tmp_path / "b", "--steps", "2", "--ckpt-every", "1"))
    one = load_checkpoint(checkpoint_dir(tmp_path / "b") / "step_0000001.pt")["model"]
    two = load_checkpoint(checkpoint_dir(tmp_path / "b") / "step_0000002.pt")["model"]
    assert all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.timeout(60)
def test_a_batch_the_task_cannot_train_on_skips_its_step_and_counts_it(tmp_path, caplog):
    first = ToyTask()
    run_training(first, train_args(tmp_path / "ref", "--steps", "2", "--workers", "0"))
    unusable = first.indices_seen[4][1]  # an item of step 2's batch (batch size 4)
    task = ToyTask(unusable=(unusable,))
    with caplog.at_level("WARNING", logger="medmoe.train.loop"):
        result = run_training(task, train_args(tmp_path / "run", "--steps", "4", "--ckpt-every", "1",
                                                "--keep-ckpts", "4"))
    assert result.skipped_steps == 1 and result.steps == 4
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_steps"] == 1
    assert unusable not in [index for _, index in task.indices_seen] and task.calls == 3
    assert f"step 2 skipped on every rank: items [{unusable}] are marked unusable" in caplog.text
    one = load_checkpoint(checkpoint_dir(tmp_path / "run") / "step_0000001.pt")["model"]
    two = load_checkpoint(checkpoint_dir(tmp_path / "run") / "step_0000002.pt")["model"]
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert [row["step"] for row in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 3, 4]


@pytest.mark.timeout(30)
def test_cpu_precision_modes(tmp_path):
    result = run_training(ToyTask(), train_args(tmp_path / "bf16", "--steps", "3", "--amp", "bf16"))
    assert json.loads((tmp_path / "bf16" / "summary.json").read_text())["precision"] == "bf16"
    assert all(v == v for v in result.final_losses.values())
    with pytest.raises(InvalidInputError, match="fp16"):
        run_training(ToyTask(), train_args(tmp_path / "fp16", "--steps", "3", "--amp", "fp16"))
