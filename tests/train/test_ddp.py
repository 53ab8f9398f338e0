"""The trainer under real 2-process DDP (torchrun, gloo on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit.align import write_tiny_manifest

from medmoe.train.logs import read_metrics

WORKER = Path(__file__).with_name("ddp_train_worker.py")


@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_two_process_training_with_an_expert_idle_on_one_rank(tmp_path, torchrun):
    torchrun(str(WORKER), str(tmp_path), timeout=220)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))

    # Ranks saw different data: their epoch-0 samples are disjoint.
    assert r0["epoch0_indices"] and not set(r0["epoch0_indices"]) & set(r1["epoch0_indices"])
    # Branch 2 never ran on rank 1 but did on rank 0 in some steps: DDP coped with the idle branch.
    assert all(2 not in used for used in r1["branches_used"])
    assert any(2 in used for used in r0["branches_used"])
    # Training changed the weights, identically on both ranks.
    assert r0["final"] == r1["final"] != r0["initial"] == r1["initial"]

    # Bad samples from both ranks are summed in the summary.
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["bad_samples"] == r0["bad_seen"] + r1["bad_seen"] == r0["result_bad"] == r1["result_bad"]
    assert r1["bad_seen"] > 0

    # SIGTERM on rank 0 alone stopped both ranks after the same step; the resumed run matches exactly.
    assert r0["interrupted_at"] == r1["interrupted_at"] == 5
    assert r0["resumed_from"].endswith("step_0000005.pt")
    assert r0["resumed_final"] == r1["resumed_final"] == r0["final"]
    full = [row["train/loss"] for row in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    resumed = [row["train/loss"] for row in read_metrics(tmp_path / "resumed" / "metrics.jsonl")]
    assert len(full) == 10 and resumed == full
    assert (r0["is_main_after_teardown"], r1["is_main_after_teardown"]) == (True, False)


@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_resume_on_two_nodes_without_a_shared_run_directory_fails_on_every_rank_with_one_error(tmp_path, torchrun):
    torchrun(str(Path(__file__).with_name("ddp_resume_worker.py")), str(tmp_path), timeout=220, nodes=2)
    errors = [json.loads((tmp_path / f"rank{r}.json").read_text())["error"] for r in range(2)]
    assert errors[0] == errors[1] and errors[0] is not None
    assert "run/checkpoints/step_0000002.pt is not visible to rank 1 on" in errors[0]
    assert "a filesystem every node shares" in errors[0]


@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_compile_under_ddp_builds_its_graphs_with_dynamos_ddp_optimizer(tmp_path, torchrun):
    write_tiny_manifest(tmp_path, bad=False)
    torchrun(str(Path(__file__).with_name("ddp_compile_worker.py")), str(tmp_path), timeout=220)
    counts = [json.loads((tmp_path / f"rank{r}.json").read_text())["ddp_optimizer_graphs"] for r in range(2)]
    assert counts[0] > 0 and counts[1] > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["compile"] == "eager"
