"""User mistakes on the command line end as one error line naming the path or value, never a traceback, and
are checked before long work; an unknown prompt and a non-positive size are errors; nothing is deleted or
replaced that the command did not create."""

from __future__ import annotations

import argparse
import json
import os
import threading

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import medmoe
from medmoe.cli.main import main
from medmoe.data.manifest import ManifestRow, write_manifest
from medmoe.data.readers import read_image
from medmoe.demo.ownership import MARKER, claim_output_dir, owned_fresh
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.saved_model import check_replaceable

pytestmark = pytest.mark.timeout(120)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medmoe: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def manifest(tmp_path):
    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(image)
    return write_manifest([ManifestRow(image=str(image), report="FINDINGS: clear.", split="train")],
                          tmp_path / "m.csv")


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


def _model_dir(tmp_path, model_type: str):
    folder = tmp_path / f"{model_type}-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


def test_data_shard_out_under_a_file(manifest, a_file, capsys):
    assert main(["data", "shard", str(manifest), "--out", str(a_file / "sub"), "--no-progress"]) == 1
    line = _error_line(capsys)
    assert f"{a_file} is a file" in line


@pytest.mark.parametrize("out", ["/proc/medmoe-x/e.npz", "/proc/self/e.npz"])
def test_align_embed_out_in_an_unwritable_place_fails_before_the_model(manifest, out, capsys, monkeypatch):
    monkeypatch.setattr(medmoe, "create_model", lambda *a, **k: pytest.fail("model built before the check"))
    assert main(["align", "embed", "--model", "medmoe-nano", "--data", str(manifest), "--out", out,
                 "--no-progress"]) == 1
    assert "cannot write there" in _error_line(capsys)


def test_demo_out_in_an_unwritable_place(capsys):
    assert main(["demo", "--quick", "--out", "/proc/medmoe-demo", "--no-progress"]) == 1
    assert "/proc/medmoe-demo" in _error_line(capsys)


def test_data_import_out_under_a_file(tmp_path, a_file, capsys):
    assert main(["data", "import", "wds", str(tmp_path), "--out", str(a_file / "m.jsonl")]) == 1
    assert "is a file" in _error_line(capsys)


def test_align_eval_with_a_segmentation_model(tmp_path, manifest, capsys):
    assert main(["align", "eval", "--model", str(_model_dir(tmp_path, "mome")), "--data", str(manifest),
                 "--out", str(tmp_path / "metrics.json"), "--no-progress"]) == 1
    line = _error_line(capsys)
    assert "holds a MoME segmentation (mome) model" in line and "MedMoE image-report alignment" in line
    assert main(["align", "embed", "--model", "mome-nano", "--data", str(manifest),
                 "--out", str(tmp_path / "e.npz")]) == 1
    assert "--model mome-nano: a MoME segmentation (mome) model" in _error_line(capsys)


def _ct(path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), -1000, np.int16), affine), str(path))
    return path


def test_seg_predict_with_an_alignment_model(tmp_path, capsys):
    ct = _ct(tmp_path / "ct.nii.gz")
    assert main(["seg", "predict", "--model", str(_model_dir(tmp_path, "medmoe")), "--input", str(ct),
                 "--prompt", "liver", "--out", str(tmp_path / "m.nii.gz")]) == 1
    line = _error_line(capsys)
    assert "holds a MedMoE image-report alignment (medmoe) model; seg predict needs a MoME segmentation" in line
    assert "Python" not in line


def test_seg_predict_unknown_prompt_is_an_error(tmp_path, capsys):
    """`seg predict --prompt nosuchorgan` exits 1 with one error line naming the class and writes no mask."""
    ct = _ct(tmp_path / "ct.nii.gz")
    assert main(["seg", "predict", "--model", str(_model_dir(tmp_path, "mome")), "--input", str(ct),
                 "--prompt", "nosuchorgan", "--out", str(tmp_path / "m.nii.gz")]) == 1
    assert "unknown class: 'nosuchorgan'" in _error_line(capsys)
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize("size", ["-5", "0"])
def test_data_shard_negative_max_size_is_an_error(manifest, tmp_path, size, capsys):
    """`data shard --max-size -5` (or 0) exits 1 with one error line naming the flag and writes no shard."""
    out = tmp_path / "shards"
    assert main(["data", "shard", str(manifest), "--out", str(out), "--max-size", size]) == 1
    assert f"--max-size {size}" in _error_line(capsys)
    assert not list(out.glob("*.tar"))


def test_os_errors_reaching_the_cli_are_one_line(tmp_path, capsys, monkeypatch):
    def broken(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr("medmoe.cli.data.run_check", broken)
    from medmoe.cli import main as main_module

    parser = main_module.build_parser()
    args = parser.parse_args(["data", "check", "m.csv"])
    args.func = broken
    fake = argparse.ArgumentParser()
    fake.parse_args = lambda a: args
    monkeypatch.setattr(main_module, "build_parser", lambda: fake)
    assert main_module.main(["data", "check", "m.csv"]) == 1
    assert _error_line(capsys) == f"medmoe: error: {tmp_path / 'x'}: Permission denied"


def test_a_fifo_given_as_an_image_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(target=lambda: result.update(error=_catch(read_image, fifo)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "read_image blocked on a FIFO"
    assert isinstance(result["error"], CorruptFileError) and "is a FIFO" in str(result["error"])
    manifest = write_manifest([ManifestRow(image=str(fifo), report="FINDINGS: clear.")], tmp_path / "m.csv")
    assert main(["data", "check", str(manifest), "--no-progress"]) == 1
    assert "is a FIFO" in capsys.readouterr().out


def _catch(function, *args):
    try:
        function(*args)
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return err
    return None


def test_demo_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    """`demo --out DIR` refuses a DIR it did not create and leaves DIR/runs/... in place; only a folder it
    claimed (or the user's explicit overwrite) lets it clear them."""
    out = tmp_path / "mine"
    precious = out / "runs" / "seg" / "notes.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("keep me")
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 1
    assert "did not create" in _error_line(capsys) and precious.read_text() == "keep me"
    with pytest.raises(InvalidInputError, match="not inside a folder claimed"):
        owned_fresh(out / "runs" / "seg", out)
    assert precious.exists()
    claim_output_dir(out, overwrite=True)  # the user's explicit consent
    assert (out / MARKER).is_file()
    owned_fresh(out / "runs" / "seg", out)
    assert not precious.exists()
    fresh = tmp_path / "fresh"
    claim_output_dir(fresh)
    claim_output_dir(fresh)  # a rerun into the demo's own folder is fine
    (fresh / "report.html").write_text("old report")
    claim_output_dir(fresh)


def test_train_refuses_to_replace_a_model_folder_it_did_not_write(tmp_path, manifest, capsys):
    """`train --out DIR` refuses to replace a DIR/model holding files medmoe did not write, and leaves them;
    a model folder medmoe saved may be replaced."""
    run = tmp_path / "run"
    precious = run / "model" / "my-weights.bin"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"weights")
    assert main(["align", "train", "--data", str(manifest), "--out", str(run), "--steps", "1", "--batch-size", "1",
                 "--no-progress", "--no-pretrained"]) == 1
    line = _error_line(capsys)
    assert "model: holds files medmoe did not write (['my-weights.bin'])" in line
    assert precious.read_bytes() == b"weights"
    model = medmoe.create_model("medmoe-nano", pretrained=False, text={"model": "tiny-bert"})
    with pytest.raises(InvalidInputError, match="refusing to replace it"):
        model.save_pretrained(run / "model")
    assert precious.read_bytes() == b"weights"
    saved = model.save_pretrained(tmp_path / "saved")
    check_replaceable(saved)  # a model medmoe saved may be replaced by the next save
    model.save_pretrained(saved)


def test_the_command_line_parser_and_the_package_root_load_without_torch():
    """`medmoe --help` builds every command's parser; neither it nor `import medmoe` may pay for torch."""
    import subprocess
    import sys

    code = ("import sys, medmoe; from medmoe.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'monai', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
