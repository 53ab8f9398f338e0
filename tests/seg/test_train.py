"""SegTask and `medmoe seg train` on tiny partially labelled phantom datasets."""

import json
import math
from collections import Counter

import pytest
import torch

import medmoe
from medmoe.cli.main import main
from medmoe.data.volumes import write_nifti
from medmoe.errors import InvalidInputError
from medmoe.seg.task import SegTask, SegTaskConfig, dice_scores, validation_dice
from medmoe_samples.ct.phantoms import FULL_LABELS, Grid, relabel, render_phantom

SPACING = (8.0, 8.0, 8.0)  # coarse phantoms: about 36 x 30 x 24 voxels, fast to cache and train on
LABELS = {
    "toy-A": {1: "liver", 2: "spleen"},
    "toy-B": {1: "kidney_right", 2: "kidney_left", 3: "spleen"},
}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    doc = {"label_maps": {k: {str(i): n for i, n in v.items()} for k, v in LABELS.items()},
           "training": [], "validation": []}
    doc["label_maps"]["toy-full"] = {str(i): n for i, n in FULL_LABELS.items()}
    cases = [("toy-A", "training")] * 3 + [("toy-B", "training")] + [("toy-full", "validation")]
    for i, (dataset, split) in enumerate(cases):
        phantom = render_phantom((7, i), Grid.make(SPACING))
        labels = FULL_LABELS if dataset == "toy-full" else LABELS[dataset]
        image = write_nifti(phantom.image, phantom.affine, root / f"img{i}.nii.gz")
        label = write_nifti(relabel(phantom, labels), phantom.affine, root / f"lab{i}.nii.gz", dtype="uint8")
        doc[split].append({"image": image.name, "label": label.name, "dataset": dataset})
    path = root / "datalist.json"
    path.write_text(json.dumps(doc))
    return path


def _task(datalist, **kw):
    config = SegTaskConfig(data=str(datalist), patch_size=(32, 32, 32), spacing=SPACING, progress=False,
                           overrides={"text": {"model": "tiny-bert"}}, pretrained=False, **kw)
    return SegTask(config)


def test_dice_scores():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).bool()
    gt = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]).bool()
    d = dice_scores(pred, gt)
    assert d[0].item() == pytest.approx(2 / 3) and math.isnan(d[1].item()) and d[2].item() == 0


@pytest.mark.timeout(120)
def test_sources_are_sampled_uniformly(datalist):
    """toy-A has 3 training volumes and toy-B one; each epoch still draws both datasets equally often."""
    ds = _task(datalist).train_dataset()
    counts = Counter(ds.entries[ds.entry_index(i)]["dataset"] for i in range(len(ds)))
    assert counts == {"toy-A": 3, "toy-B": 3}


@pytest.mark.timeout(120)
def test_training_step_prompts_only_labelled_classes(datalist):
    task = _task(datalist)
    ds = task.train_dataset()
    # channels: every class any split labels (the validation set labels all phantom classes)
    assert set(task.class_names) == set(FULL_LABELS.values()) | {"kidney"}
    source = [ds.entries[ds.entry_index(i)]["dataset"] for i in range(len(ds))]
    a, b = ds[source.index("toy-A")][0], ds[source.index("toy-B")][0]
    batch = task.collate([a, a])
    assert batch["label_ids"].shape == (2, 1, 32, 32, 32) and batch["label_mask"].shape[1] == len(task.class_names)
    assert [task.class_names[k] for k in batch["active"]] == sorted(["liver", "spleen"], key=task.class_names.index)
    torch.manual_seed(0)
    model = task.build_model().train()
    out = task.training_step(model, batch)
    assert out["prompted_classes"].item() == 2  # toy-A labels liver and spleen only
    assert out["bce_loss"] > 0 and out["dice_loss"] > 0 and out["gate_usage"].shape == (5,)
    (out["bce_loss"] + out["dice_loss"]).backward()
    out = task.training_step(model, task.collate([a, b]))
    assert out["prompted_classes"].item() == 5  # union of both datasets' classes (kidney = both kidneys)


@pytest.mark.timeout(200)
def test_cli_train_exports_a_model_that_predicts(datalist, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["seg", "train", "--data", str(datalist), "--out", str(out), "--steps", "2", "--batch-size", "2",
               "--spacing", *map(str, SPACING), "--patch-size", "32", "32", "32", "--workers", "0",
               "--set", "text.model=tiny-bert", "--no-pretrained", "--val-max-cases", "1", "--warmup-steps", "1",
               "--log-every", "1", "--no-progress", "--lr", "1e-3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps" in printed and "validation:" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train/dice_loss" in r for r in rows)
    val = next(r for r in rows if "val/dice_mean" in r)
    # the validation case labels every phantom organ: all 5 trained classes are scored there
    assert {"val/dice/liver", "val/dice/spleen", "val/dice/kidney_right", "val/dice/kidney_left"} <= set(val)
    model = medmoe.load_model(out / "model")
    assert tuple(model.config.roi_size) == (32, 32, 32) and tuple(model.config.spacing) == SPACING
    assert set(model.config.trained_classes) == set(FULL_LABELS.values()) | {"kidney"}  # what --prompt all predicts
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32, 32), ["liver"]).shape == (1, 1, 32, 32, 32)


@pytest.mark.timeout(180)
def test_training_step_reads_nothing_back_from_the_device(tmp_path_factory):
    """A mome-nano step on a batch of two phantom datasets, backward included: no .item(), .tolist(), bool(),
    nonzero or boolean-mask index on a device tensor (each would stall a GPU until it caught up)."""
    from testkit.seg import phantom_datalist

    from medmoe.train.host_reads import HostReadCounter

    task = SegTask(SegTaskConfig(data=str(phantom_datalist(tmp_path_factory)), patch_size=(32, 32, 32),
                                 spacing=(6.0, 6.0, 6.0), progress=False, pretrained=False,
                                 overrides={"text": {"model": "tiny-bert"}}, cache=False))
    ds = task.train_dataset()
    batch = task.collate([ds[0], ds[1]])
    assert len(set(batch["dataset"])) == 2
    torch.manual_seed(0)
    model = task.build_model().train()
    with HostReadCounter() as reads:
        out = task.training_step(model, batch)
        (out["bce_loss"] + out["dice_loss"]).backward()
    assert reads.total == 0, reads.calls
    assert out["bce_loss"] > 0 and out["prompted_classes"] == len(batch["active"])


def test_a_batch_of_failed_samples_is_refused_by_check_batch_not_by_the_step(datalist):
    from medmoe.seg.data import BadSample

    task = _task(datalist)
    ds = task.train_dataset()
    bad = BadSample(index=0, path="a.nii.gz", reason="unreadable", dataset="toy-A")
    assert task.check_batch(task.collate([ds[0], bad])) is None
    reason = task.check_batch(task.collate([bad, bad]))
    assert "every sample of the batch failed to load (2 skipped)" in reason


@pytest.mark.timeout(120)
def test_channels_last_applies_on_the_cpu_by_default_when_the_model_is_placed(datalist):
    task = _task(datalist)
    assert task.config.channels_last is None
    assert task.channels_last(torch.device("cpu")) and not task.channels_last(torch.device("cuda"))
    assert _task(datalist, channels_last=True).channels_last(torch.device("cuda"))
    assert not _task(datalist, channels_last=False).channels_last(torch.device("cpu"))
    task.train_dataset()
    torch.manual_seed(0)
    model = task.build_model()
    assert model.experts.block(0)[0].weight.is_contiguous()  # the device is not known yet
    model = task.to_device(model, torch.device("cpu"))
    assert model.experts.block(0)[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    off = _task(datalist, channels_last=False)
    model = off.to_device(off.build_model(), torch.device("cpu"))
    assert model.experts.block(0)[0].weight.is_contiguous()


@pytest.mark.timeout(120)
def test_validation_keeps_the_callers_bf16_autocast(datalist):
    task = _task(datalist)
    task.train_dataset()
    torch.manual_seed(0)
    model = task.build_model().eval()
    dtypes = []
    model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = validation_dice(model, task._validation_dataset(), max_cases=1)
    assert out["cases"] == 1 and dtypes and set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    validation_dice(model, task._validation_dataset(), max_cases=1)
    assert set(dtypes) == {torch.float32}  # no autocast of the caller: the CPU's own choice, none


def test_task_errors(datalist, tmp_path):
    with pytest.raises(InvalidInputError, match="datalist not found"):
        SegTask(SegTaskConfig(data=str(tmp_path / "nope.json")))
    with pytest.raises(InvalidInputError, match=r"medmoe-nano: a MedMoE image-report alignment \(medmoe\) model; this needs a MoME segmentation"):
        SegTask(SegTaskConfig(data=str(datalist), model="medmoe-nano")).build_model()


def test_run_config_yaml_sets_seg_train_defaults():
    from pathlib import Path

    from medmoe.cli.main import build_parser

    config = Path(__file__).resolve().parents[2] / "configs" / "seg-nano-phantoms.yaml"
    args = build_parser().parse_args(["seg", "train", "--config", str(config), "--out", "run", "--steps", "7"])
    assert args.patch_size == [64, 32, 32] and args.spacing == [4.5, 4.5, 4.5] and args.soft_labels is True
    assert args.model == "mome-nano" and args.steps == 7 and args.val_split == "validation"


VALIDATE_SCRIPT = """
import json, sys
import torch, torch.distributed as dist
from medmoe.seg.task import SegTask, SegTaskConfig, validation_dice

distributed = sys.argv[4] == "ddp"
if distributed:
    dist.init_process_group("gloo")
task = SegTask(SegTaskConfig(data=sys.argv[1], patch_size=(32, 32, 32), spacing=(8.0, 8.0, 8.0), progress=False,
                             overrides={"text": {"model": "tiny-bert"}}, pretrained=False, cache_dir=sys.argv[3]))
torch.manual_seed(0)
model = task.build_model().eval()
task.train_dataset()
out = validation_dice(model, task._validation_dataset())
if not distributed or dist.get_rank() == 0:
    json.dump(out, open(sys.argv[2], "w"))
if distributed:
    dist.destroy_process_group()
"""


@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_distributed_validation_equals_one_process(tmp_path, torchrun, torchrun_env):
    """Each of 2 ranks predicts its share of 3 validation cases; the reduced Dice equals one process's."""
    import subprocess
    import sys

    root = tmp_path / "data"
    root.mkdir()
    doc = {"label_maps": {"toy-full": {str(i): n for i, n in FULL_LABELS.items()}}, "training": [], "validation": []}
    for i, split in enumerate(["training", "validation", "validation", "validation"]):
        phantom = render_phantom((11, i), Grid.make(SPACING))
        image = write_nifti(phantom.image, phantom.affine, root / f"img{i}.nii.gz")
        label = write_nifti(relabel(phantom, FULL_LABELS), phantom.affine, root / f"lab{i}.nii.gz", dtype="uint8")
        doc[split].append({"image": image.name, "label": label.name, "dataset": "toy-full"})
    (root / "datalist.json").write_text(json.dumps(doc))
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE_SCRIPT)
    args = [str(root / "datalist.json"), None, str(tmp_path / "cache")]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    proc = subprocess.run([sys.executable, str(script), args[0], str(one), args[2], "single"], env=torchrun_env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torchrun(script, args[0], two, args[2], "ddp")
    single, ddp = json.loads(one.read_text()), json.loads(two.read_text())
    assert set(single) == set(ddp) and "dice_mean" in single and len(single) > 3
    assert single["cases"] == ddp["cases"] == 3  # each case scored once, by one rank
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, abs=1e-9), key
