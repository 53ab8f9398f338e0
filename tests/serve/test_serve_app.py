"""`medmoe serve` without a browser: each tab's work on tiny models, upload checks, the page's handlers turning
errors into messages, and the command's argument checks."""

from __future__ import annotations

import dataclasses
import json
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from testkit.serve import (
    SEG_CLASSES,
    always_finding_seg_model,
    corrupt_png,
    phantom_dicom_zip,
    phantom_nifti,
    phantom_volume,
    tiny_align_model,
    write_gallery,
)

from medmoe.cli.main import main
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.serve.results import decode_picture
from medmoe.serve.segment import ALPHA, class_colours
from medmoe.serve.services import Services
from medmoe.serve.uploads import UploadLimits, extract_dicom_zip, uploaded_file, volume_kind

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return write_gallery(tmp_path_factory.mktemp("gallery"))


@pytest.fixture(scope="module")
def services(tmp_path_factory, gallery):
    from medmoe.align.index import SearchIndex, build_index

    model = tiny_align_model()
    folder = build_index(model, gallery, tmp_path_factory.mktemp("index") / "idx", progress=False)
    services = Services(model, always_finding_seg_model(), SearchIndex.load(folder),
                        workdir=tmp_path_factory.mktemp("work"))
    yield services
    services.close()


def png(path, size=(70, 90)):
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random(size) * 255).astype(np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------- uploads
def test_uploads_are_checked_before_anything_reads_them(tmp_path):
    limits = UploadLimits(max_bytes=1000)
    with pytest.raises(InvalidInputError, match="no file uploaded"):
        uploaded_file(None, limits, what="an image")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        uploaded_file(str(tmp_path / "empty.png"), limits, what="an image")
    (tmp_path / "big.png").write_bytes(b"x" * 1001)
    with pytest.raises(InvalidInputError, match="larger than this page accepts"):
        uploaded_file(str(tmp_path / "big.png"), limits, what="an image")
    with pytest.raises(InvalidInputError, match="upload it again"):
        uploaded_file(str(tmp_path / "gone.png"), limits, what="an image")
    (tmp_path / "ok.png").write_bytes(b"x" * 10)
    assert uploaded_file([str(tmp_path / "ok.png")], limits, what="an image") == tmp_path / "ok.png"


def test_volume_kind_reads_the_first_bytes(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match="not a CT volume"):
        volume_kind(tmp_path / "notes.txt")
    (tmp_path / "fake.nii.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(CorruptFileError, match="not a NIfTI header"):
        volume_kind(tmp_path / "fake.nii.gz")
    with zipfile.ZipFile(tmp_path / "named.nii", "w") as z:  # a zip whatever its name
        z.writestr("a.dcm", b"x")
    assert volume_kind(tmp_path / "named.nii") == "zip"
    assert volume_kind(phantom_nifti(tmp_path / "ct.nii.gz")) == "nifti"


def dicom_bytes() -> bytes:
    """A small real DICOM slice (pydicom's CT_small.dcm, 39 KB)."""
    from testkit.data import dicom_file

    with open(dicom_file("CT_small.dcm"), "rb") as fh:
        return fh.read()


def test_zip_members_never_choose_where_they_are_written(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../escape.dcm", dicom_bytes())
        z.writestr("/abs/path/slice.DCM", dicom_bytes() + b"b")
        z.writestr("dir/", b"")
        z.writestr("series/name with spaces.weird-suffix!", dicom_bytes())
        z.writestr("README.txt", b"exported by a PACS")  # not DICOM: not written
    out = extract_dicom_zip(archive, tmp_path / "out", UploadLimits())
    assert sorted(p.name for p in out.iterdir()) == ["00000.dcm", "00001.dcm", "00002.dcm"]
    assert not (tmp_path.parent / "escape.dcm").exists()
    assert (out / "00001.dcm").read_bytes() == dicom_bytes() + b"b"


def test_a_zip_of_300_mb_of_zeros_is_refused_without_unpacking_it(tmp_path):
    archive = tmp_path / "zeros.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("series/00001.dcm", "w", force_zip64=True) as member:
            block = b"\0" * 2**20
            for _ in range(300):
                member.write(block)
    assert archive.stat().st_size < 400_000
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match="holds no DICOM file: none of its 1 file"):
        extract_dicom_zip(archive, tmp_path / "out", UploadLimits())
    assert time.perf_counter() - start < 1.0
    assert not list((tmp_path / "out").iterdir())


def test_zip_limits_count_what_is_unpacked(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", dicom_bytes() + b"\0" * 500_000)
    assert bomb.stat().st_size < 30_000
    with pytest.raises(InvalidInputError, match="unpacks to more than"):
        extract_dicom_zip(bomb, tmp_path / "out", UploadLimits(max_bytes=100_000))
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(4):
            z.writestr(f"{i}.dcm", b"x")
    with pytest.raises(InvalidInputError, match="more than 3 files"):
        extract_dicom_zip(many, tmp_path / "out2", UploadLimits(max_zip_members=3))
    with zipfile.ZipFile(tmp_path / "nothing.zip", "w") as z:
        z.writestr("folder/", b"")
    with pytest.raises(InvalidInputError, match="holds no file"):
        extract_dicom_zip(tmp_path / "nothing.zip", tmp_path / "out3", UploadLimits())
    (tmp_path / "cut.zip").write_bytes(many.read_bytes()[:60])
    with pytest.raises(CorruptFileError, match="not a readable zip"):
        extract_dicom_zip(tmp_path / "cut.zip", tmp_path / "out4", UploadLimits())


# ---------------------------------------------------------------------------------------------- search
def test_search_shows_thumbnails_best_first_with_reports(services, gallery):
    result = services.search("  pleural   effusion ", k=5)
    assert len(result.thumbnails) == len(result.rows) == 5
    scores = [row[1] for row in result.rows]
    assert scores == sorted(scores, reverse=True) and [row[0] for row in result.rows] == [1, 2, 3, 4, 5]
    picture, caption = result.thumbnails[0]
    picture = decode_picture(picture)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and max(picture.shape[:2]) == 256
    assert picture.std() > 5  # the image itself, not a placeholder
    assert caption.startswith("#1 ") and result.rows[0][3][:20] in caption
    assert f"  {result.rows[0][1]:.3f}  " in caption  # the table shows the caption's score
    assert "5 image(s) for \u201cpleural effusion\u201d" == result.message("pleural effusion")


def test_search_keeps_going_when_an_indexed_image_is_gone(services, gallery):
    hits = services.index.search_text(services.model, ["chest x-ray"], k=8)[0]
    victim = hits[0].path
    saved = open(victim, "rb").read()
    try:
        open(victim, "wb").close()  # emptied on disk after indexing
        result = services.search("chest x-ray", k=8)
    finally:
        open(victim, "wb").write(saved)
    assert result.unreadable == [hits[0].id]
    assert decode_picture(result.thumbnails[0][0]).std() == 0  # the grey placeholder
    assert "could not be read" in result.message("chest x-ray")


@pytest.mark.parametrize("query, k, message", [("   ", 5, "type what to search for"), ("x" * 1001, 5, "at most 1000"),
                                               ("effusion", 0, "expected 1 to 100"), ("effusion", "many", "whole number")])
def test_search_refuses_bad_queries(services, query, k, message):
    with pytest.raises(InvalidInputError, match=message):
        services.search(query, k)


# ---------------------------------------------------------------------------------------------- classify
def test_classify_gives_probabilities_expert_and_attention(services, tmp_path):
    result = services.classify(str(png(tmp_path / "chest.png")), "xray, ct, pleural effusion, normal",
                               "Chest x-ray: pleural effusion at the base.")
    assert list(result.probabilities) == ["xray", "ct", "pleural effusion", "normal"]
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(result.expert_probabilities) == 6 and result.expert in result.expert_probabilities
    assert result.expert_probabilities[result.expert] == max(result.expert_probabilities.values())
    captions = [c for _, c in result.attention]
    assert captions[0] == "image" and captions[1].startswith("mean of: ")
    assert {"pleural", "effusion"} <= set(captions[2:])
    image, heat = result.attention[0][0], result.attention[2][0]
    assert image.shape == heat.shape and image.shape[0] >= 320 and not np.array_equal(image, heat)


def test_classify_without_text_explains_the_top_class(services, tmp_path):
    result = services.classify(str(png(tmp_path / "x.png")), "mri, pathology")
    top = max(result.probabilities, key=result.probabilities.get)
    assert result.text == {"mri": "an mri scan.", "pathology": "a histopathology slide."}[top]


def test_classify_reads_a_dicom_slice(services, tmp_path):
    from testkit.seg import write_dicom_series

    folder = write_dicom_series(tmp_path / "series", phantom_volume().image.astype(float)[:, :, :3])
    result = services.classify(str(sorted(folder.iterdir())[1]), "ct, xray")
    assert result.modality == "ct" and len(result.attention) >= 3


@pytest.mark.parametrize("make, error, message", [
    (lambda p: corrupt_png(p / "broken.png"), CorruptFileError, "broken.png"),
    (lambda p: (p / "notes.txt").write_text("not an image") and p / "notes.txt", CorruptFileError,
     "unsupported file type"),
    (lambda p: (p / "empty.jpg").write_bytes(b"") or p / "empty.jpg", CorruptFileError, "empty"),
])
def test_classify_bad_uploads_raise_a_medmoe_error(services, tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        services.classify(str(make(tmp_path)), "xray, ct")


def test_classify_needs_two_classes(services, tmp_path):
    with pytest.raises(InvalidInputError, match="at least two class names"):
        services.classify(str(png(tmp_path / "x.png")), "xray, , XRAY")


# ---------------------------------------------------------------------------------------------- segment
def test_segment_a_nifti_draws_masks_and_writes_the_label_map(services, tmp_path):
    ct = phantom_nifti(tmp_path / "abdomen.nii.gz")
    view = services.segment(str(ct), ["liver", "spleen"], "", False)
    assert view.names == ["liver", "spleen"] and all(v > 0 for v in view.volumes_ml)
    saved = nib.load(view.mask_file)
    original = nib.load(ct)
    assert saved.shape == original.shape and np.allclose(saved.affine, original.affine)
    assert set(np.unique(np.asarray(saved.dataobj))) <= {0, 1, 2}
    summary = json.loads(view.summary_file.read_text())
    assert [row["class"] for row in summary["classes"]] == ["liver", "spleen"]
    picture = view.render(view.best_slice())
    assert picture.dtype == np.uint8 and max(picture.shape[:2]) == 512
    # inside a mask, the CT is blended with the class's colour (or drawn in it, on the outline)
    plain = dataclasses.replace(view, labels=np.zeros_like(view.labels)).render(view.best_slice()).astype(float)
    tinted = (1 - ALPHA) * plain + ALPHA * class_colours(2)[:, None, None, :].astype(float)  # (K, H, W, 3)
    by_class = [(np.abs(picture - t).max(-1) <= 1) | np.all(picture == c, axis=-1)
                for t, c in zip(tinted, class_colours(2))]
    assert (by_class[0] | by_class[1]).mean() > 0.3  # the mask covers the body and more
    assert np.array_equal(view.render(view.best_slice()), picture)
    assert "spleen" in view.legend_html() and "ml" in view.legend_html()
    assert view.render(10_000).shape == view.render(-5).shape  # slices out of range are clipped


def test_segment_a_zipped_dicom_series_and_free_text_classes(services, tmp_path):
    archive = phantom_dicom_zip(tmp_path / "series.zip", tmp_path)
    view = services.segment(str(archive), [], "livr, right kidney", False)
    assert view.names == ["liver", "kidney_right"]
    assert view.mask_file.name == "series_mask.nii.gz"
    assert not (view.mask_file.parent / "series").exists()  # the unpacked slices are gone
    assert nib.load(view.mask_file).shape == phantom_volume().image.shape


def test_segment_offers_the_models_trained_classes(services):
    assert services.seg_classes() == list(SEG_CLASSES)


@pytest.mark.parametrize("setup, message", [
    (lambda p: (str(phantom_nifti(p / "ct.nii.gz")), ["pancreas tumor lung"]), "did you mean|no close class"),
    (lambda p: (str(phantom_nifti(p / "ct.nii.gz")), []), "choose at least one class"),
    (lambda p: (str(png(p / "slice.png")), ["liver"]), "not a CT volume"),
    (lambda p: ((p / "cut.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 30) and str(p / "cut.nii.gz"),
                ["liver"]), "cut.nii.gz"),
])
def test_segment_bad_inputs_raise_a_medmoe_error(services, tmp_path, setup, message):
    upload, classes = setup(tmp_path)
    with pytest.raises((InvalidInputError, CorruptFileError), match=message):
        services.segment(upload, classes, "", False)


def test_segment_refuses_a_ct_larger_than_the_limit_before_reading_it(services, tmp_path, monkeypatch):
    import medmoe.data.volumes

    ct = phantom_nifti(tmp_path / "big.nii.gz")
    monkeypatch.setattr(services, "limits", UploadLimits(max_ct_voxels=1000))
    monkeypatch.setattr(medmoe.data.volumes, "read_ct", lambda *a, **k: pytest.fail("the CT was read"))
    with pytest.raises(InvalidInputError, match="larger than this page segments"):
        services.segment(str(ct), ["liver"], "", False)


# ---------------------------------------------------------------------------------------------- the page
@pytest.mark.filterwarnings("ignore:.*:UserWarning")  # gr.Warning outside a page warns
def test_handlers_turn_errors_into_messages_and_clear_outputs(services, tmp_path):
    from medmoe.serve import app

    bad = str(corrupt_png(tmp_path / "broken.png"))
    good = str(png(tmp_path / "ok.png"))
    # one batch: the bad upload's outputs are cleared and it gets a message; the good one is answered
    labels, experts, attention, status = app._classify_handler(services)([bad, good], ["xray, ct"] * 2, ["", ""])
    assert (labels[0], experts[0], attention[0]) == (None, None, [])
    assert "Could not classify the image" in status[0] and "broken.png" in status[0] and str(tmp_path) not in status[0]
    assert labels[1] and "routed to" in status[1] and len(attention[1]) >= 3
    outputs = app._segment_handler(services)(bad, ["liver"], "", False)
    assert outputs[0] is None and "Could not segment the CT" in outputs[-1] and "not a CT volume" in outputs[-1]
    galleries, rows, status = app._search_handler(services)(["", "effusion"], [5, 3])
    assert galleries[0] == [] and "type what to search for" in status[0]
    assert len(galleries[1]) == len(rows[1]) == 3 and status[1] == "3 image(s) for \u201ceffusion\u201d"
    assert app._slice_handler(services)(None, 3) is None  # the viewer before any segmentation


@pytest.mark.filterwarnings("ignore:.*:UserWarning")
def test_handlers_report_unexpected_errors_as_internal(services, tmp_path, monkeypatch):
    from medmoe.serve import app

    monkeypatch.setattr(services, "search_many", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    _, _, status = app._search_handler(services)(["effusion", "nodule"], [3, 3])
    assert status == [status[0]] * 2 and "internal error (RuntimeError: boom)" in status[0]


def test_page_has_one_tab_per_service(services):
    from medmoe.serve.app import build_app

    ids = {block.elem_id for block in build_app(services).blocks.values()}
    assert {"tab-search", "tab-classify", "tab-segment", "search-gallery", "classify-label", "segment-overlay",
            "segment-download"} <= ids
    only_seg = Services(None, services.seg_model, workdir=services.workdir / "only-seg")
    ids = {block.elem_id for block in build_app(only_seg).blocks.values()}
    assert "tab-segment" in ids and not {"tab-search", "tab-classify"} & ids


def test_a_model_with_many_classes_offers_a_searchable_list(services, monkeypatch):
    import gradio as gr

    from medmoe.seg.classes import ClassTemplate
    from medmoe.serve.app import build_app

    names = list(ClassTemplate.default().names)
    monkeypatch.setattr(services, "seg_classes", lambda: names)
    chooser = [b for b in build_app(services).blocks.values() if b.elem_id == "segment-classes"][0]
    assert isinstance(chooser, gr.Dropdown) and chooser.multiselect and len(chooser.choices) == len(names) > 24


# ---------------------------------------------------------------------------------------------- the command
def test_serve_checks_its_arguments_before_loading(services, tmp_path, capsys):
    seg_dir = services.seg_model.save_pretrained(tmp_path / "mome")
    assert main(["serve", "--model", str(seg_dir)]) == 1
    assert "a 'mome' model; --model needs a 'medmoe' model" in capsys.readouterr().err
    assert main(["serve"]) == 1
    assert "nothing to serve" in capsys.readouterr().err
    assert main(["serve", "--seg-model", str(seg_dir), "--index", str(tmp_path)]) == 1
    assert "--index needs --model" in capsys.readouterr().err
    assert main(["serve", "--seg-model", str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err
    assert main(["serve", "--seg-model", str(seg_dir), "--port", "70000"]) == 1
    assert "--port 70000: expected 1 to 65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--seg-model", str(seg_dir), "--max-upload-mb", "0"])


def test_the_viewer_opens_on_the_slice_with_most_mask_nearest_the_middle(services, tmp_path):
    view = services.segment(str(phantom_nifti(tmp_path / "ct.nii.gz")), ["liver"], "", False)
    assert view.best_slice() == (view.depth - 1) // 2 or view.best_slice() == view.depth // 2  # mask everywhere
    view.labels[:] = 0
    assert view.best_slice() in ((view.depth - 1) // 2, view.depth // 2)
    view.labels[:, :, 3] = 1
    assert view.best_slice() == 3
