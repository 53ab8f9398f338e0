"""The alignment task on the shared trainer: training, bad samples, exact resume, the CLI."""

import json

import numpy as np
import pytest
import torch
from testkit.align import TINY, CrashingTask, args_for, crash_and_resume, logged_losses, write_tiny_manifest

from medmoe.align.task import AlignTask, AlignTaskConfig
from medmoe.cli.main import main as cli
from medmoe.train import run_training
from medmoe.train.logs import read_metrics


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_tiny_manifest(tmp_path_factory.mktemp("data"))


def task_config(manifest, **kw):
    return AlignTaskConfig(data=str(manifest), model="medmoe-nano", overrides=dict(TINY), **kw)


def test_collate_reports_bad_samples_and_refills_the_batch(manifest):
    task = AlignTask(task_config(manifest))
    dataset = task.train_dataset()
    bad_index = len(dataset) - 1
    batch = task.collate([dataset[0], dataset[1], dataset[bad_index], dataset[2]])
    assert batch["images"].shape == (4, 3, 64, 64)
    assert [b.path.endswith("broken.png") for b in batch["bad"]] == [True]
    assert len(set(batch["index"].tolist())) == 4 and bad_index not in batch["index"].tolist()
    again = task.collate([dataset[0], dataset[1], dataset[bad_index], dataset[2]])
    assert torch.equal(batch["index"], again["index"])  # deterministic refill


@pytest.mark.timeout(120)
def test_kill_after_checkpoint_and_resume_gives_the_same_next_losses(manifest, tmp_path):
    flags = ("--steps", "8", "--ckpt-every", "3")
    ref_dir, result, ref, resumed = crash_and_resume(task_config(manifest), tmp_path, flags)
    assert result.resumed_from.name == "step_0000003.pt"
    for step in range(4, 9):  # the next 5 logged losses
        assert resumed[step] == ref[step], step
    assert set(ref[4]) >= {"train/global_loss", "train/local_loss", "train/distill_loss", "train/loss"}
    summary = json.loads((ref_dir / "summary.json").read_text())
    assert summary["bad_samples"] >= 1


@pytest.mark.timeout(120)
def test_upcycling_ties_the_experts_then_copies_expert_zero_and_resumes_exactly(manifest, tmp_path):
    flags = ("--steps", "7", "--ckpt-every", "3")
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    run_training(CrashingTask(task_config(manifest, upcycle_steps=4)), args_for(ref_dir, *flags))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(CrashingTask(task_config(manifest, upcycle_steps=4), crash_at_call=5), args_for(run_dir, *flags))
    run_training(CrashingTask(task_config(manifest, upcycle_steps=4)), args_for(run_dir, *flags, "--resume", "latest"))
    ref, resumed = logged_losses(ref_dir), logged_losses(run_dir)
    for step in range(4, 8):  # across the upcycling step
        assert resumed[step] == ref[step], step

    task = AlignTask(task_config(manifest, upcycle_steps=2))
    model = task.build_model()
    initial = [e.proj[0][0].weight.clone() for e in model.moe.experts]
    task.before_step(model, 0)
    assert model.moe.tied
    task.before_step(model, 2)
    assert not model.moe.tied
    assert all(torch.equal(e.proj[0][0].weight, initial[0]) for e in model.moe.experts)
    with pytest.raises(Exception, match="upcycle_steps must be >= 0"):
        AlignTask(task_config(manifest, upcycle_steps=-1))


@pytest.mark.timeout(150)
def test_cli_train_eval_embed(manifest, tmp_path):
    run = tmp_path / "run"
    sets = ["--set", f"text={json.dumps(TINY['text'])}", "--set", f"backbone={json.dumps(TINY['backbone'])}"]
    sets += [x for k in ("local_dim", "embed_dim", "scale_hidden", "router_hidden") for x in ("--set", f"{k}={TINY[k]}")]
    code = cli(["align", "train", "--data", str(manifest), "--out", str(run), "--steps", "3", "--batch-size", "4",
                "--device", "cpu", "--workers", "0", "--no-progress", "--val-data", str(manifest), "--eval-every", "3",
                *sets])
    assert code == 0
    rows = list(read_metrics(run / "metrics.jsonl"))
    assert any("val/text_to_image/R@1" in r for r in rows)
    assert any("train/route/usage/0" in r for r in rows)
    out = tmp_path / "eval" / "metrics.json"
    assert cli(["align", "eval", "--model", str(run / "model"), "--data", str(manifest), "--out", str(out),
                "--no-progress"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 2 and set(metrics["retrieval"]) == {"n", "image_to_text", "text_to_image"}
    assert {"R@1", "R@5", "R@10", "mean_rank", "median_rank", "P@1"} <= set(metrics["retrieval"]["text_to_image"])
    assert metrics["routing"]["n_labelled"] == 2 and len(metrics["routing"]["confusion"]) == 6
    assert {"1%", "10%", "100%"} == set(metrics["linear_probe"]["modality"])
    assert "modality" in metrics["zero_shot"]
    figures = {p.rsplit("/", 1)[-1] for p in metrics["figures"]}
    assert figures == {"routing_confusion.png", "attention_maps.png"}
    assert all((out.parent / "metrics_figures" / f).stat().st_size > 1000 for f in figures)
    per_item = tmp_path / "eval" / "per_item.json"
    assert cli(["align", "eval", "--model", str(run / "model"), "--data", str(manifest), "--out", str(per_item),
                "--no-progress", "--no-figures", "--per-item"]) == 0
    items = json.loads(per_item.read_text())["items"]
    assert len(items["paths"]) == 2 and sorted(items["text_to_image_rank"]) in ([1, 1], [1, 2], [2, 2])
    r1 = np.mean(np.array(items["text_to_image_rank"]) <= 1)
    assert r1 == pytest.approx(json.loads(per_item.read_text())["retrieval"]["text_to_image"]["R@1"])
    assert cli(["align", "compare", str(per_item), str(per_item)]) == 0
    npz = tmp_path / "emb.npz"
    assert cli(["align", "embed", "--model", str(run / "model"), "--data", str(manifest), "--out", str(npz),
                "--split", "train", "--no-progress"]) == 0
    with np.load(npz) as data:
        assert data["image_embeds"].shape == (12, 24) and data["text_embeds"].shape == (12, 24)
        assert np.allclose(np.linalg.norm(data["image_embeds"], axis=1), 1, atol=1e-5)
        assert data["paths"].shape == (12,) and data["expert_index"].shape == (12,)


def test_loss_weights_given_as_model_overrides_go_to_the_task(manifest):
    config = AlignTaskConfig(data=str(manifest), overrides={**TINY, "distill_loss_weight": 0.25, "local_loss_chunk": 2})
    assert config.distill_loss_weight == 0.25 and config.local_loss_chunk == 2
    assert "distill_loss_weight" not in config.overrides and config.overrides["local_dim"] == TINY["local_dim"]
    assert AlignTask(config).loss_weights.distill_loss_weight == 0.25
    same = AlignTaskConfig(data=str(manifest), distill_loss_weight=0.25, overrides={"distill_loss_weight": 0.25})
    assert same.distill_loss_weight == 0.25
    with pytest.raises(Exception, match="distill_loss_weight is given twice"):
        AlignTaskConfig(data=str(manifest), distill_loss_weight=0.5, overrides={"distill_loss_weight": 0.25})
    with pytest.raises(Exception, match="local_loss_chunk"):
        AlignTaskConfig(data=str(manifest), overrides={"local_loss_chunk": "eight"})
    with pytest.raises(Exception, match="global_loss_weight must be >= 0"):
        AlignTask(AlignTaskConfig(data=str(manifest), global_loss_weight=-1.0))


def test_the_task_records_whether_the_experts_learn_modalities(manifest):
    assert AlignTask(task_config(manifest)).build_model().config.modality_experts
    off = AlignTask(task_config(manifest, router_ce_loss_weight=0.0)).build_model()
    assert not off.config.modality_experts


def test_backbone_lr_scale_puts_the_backbone_in_its_own_groups_or_freezes_it(manifest):
    from medmoe.errors import InvalidInputError
    from medmoe.train.optim import build_optimizer, build_scheduler

    cpu = torch.device("cpu")
    task = AlignTask(task_config(manifest, backbone_lr_scale=0.1))
    model = task.build_model()
    optimizer = build_optimizer(model, task, lr=1e-3, weight_decay=0.05, device=cpu)
    backbone = {id(p) for p in model.backbone.parameters()}
    lrs = {(g["lr"], g["weight_decay"]): {id(p) in backbone for p in g["params"]} for g in optimizer.param_groups}
    assert lrs == {(1e-3, 0.05): {False}, (1e-3, 0.0): {False}, (1e-4, 0.05): {True}, (1e-4, 0.0): {True}}
    assert optimizer.param_groups[0]["lr"] == 1e-3  # the logged lr is the run's
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(1 for p in model.parameters() if p.requires_grad)
    scheduler = build_scheduler(optimizer, steps=10, warmup_steps=2, min_ratio=0.0)
    optimizer.step()  # no gradients: changes nothing
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups][::2] == pytest.approx([1e-3, 1e-4])  # warm-up scales both

    frozen_task = AlignTask(task_config(manifest, backbone_lr_scale=0.0))
    frozen = frozen_task.build_model()
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    optimizer = build_optimizer(frozen, frozen_task, lr=1e-3, weight_decay=0.05, device=cpu)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained and not trained & {id(p) for p in frozen.backbone.parameters()}

    with pytest.raises(InvalidInputError, match="backbone_lr_scale must be in"):
        task_config(manifest, backbone_lr_scale=1.5)
