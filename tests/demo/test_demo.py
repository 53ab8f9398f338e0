import json
import math

import pytest
import torch

from medmoe.cli.main import main


def test_cuda_on_a_cpu_machine_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["demo", "--device", "cuda", "--out", "unused"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_demo_writes_a_sane_report_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "text->image R@1, modality benchmark" in printed and str(out / "report.html") in printed
    assert "one hit = " in printed and "95 % interval" in printed  # the noise level of the retrieval gap is stated

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["environment"]["torch_threads"] >= 1 and metrics["budget"]["align_model"] == "medmoe-effnet-nano"
    for which, k in (("moe", 6), ("single", 1)):
        run = metrics["align"][which]
        assert run["num_experts"] == k and run["train"]["steps"] == 4
        for dataset in ("modality-bench", "iu-cxr", "real-samples"):
            ev = run["eval"][dataset]
            assert ev["n"] > 0
            for direction in ("text_to_image", "image_to_text"):
                r = ev["retrieval"][direction]
                assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1.0
    for dataset in ("modality-bench", "iu-cxr"):
        # the pair-by-pair comparison is computed from the two models' own ranks
        cmp = metrics["align"]["moe_vs_single"][dataset]["text_to_image"]["R@1"]
        assert cmp["n"] == metrics["align"]["moe"]["eval"][dataset]["n"]
        assert cmp["a"] == pytest.approx(metrics["align"]["moe"]["eval"][dataset]["retrieval"]["text_to_image"]["R@1"])
        assert cmp["b"] == pytest.approx(metrics["align"]["single"]["eval"][dataset]["retrieval"]["text_to_image"]["R@1"])
        assert cmp["ci_low"] <= cmp["difference"] <= cmp["ci_high"]
        assert "items" not in metrics["align"]["moe"]["eval"][dataset]
        assert "items" in json.loads((out / "align" / "moe" / f"{dataset}.json").read_text())
    routing = metrics["align"]["moe"]["eval"]["real-samples"]["routing"]
    assert 0.0 <= routing["agreement"] <= 1.0 and sum(map(sum, routing["confusion"])) == routing["n_labelled"]
    seg = metrics["seg"]
    assert seg["train"]["steps"] == 2
    dice = seg["eval"]["mean"]["dice"]
    assert dice is None or (isinstance(dice, float) and (math.isnan(dice) or 0.0 <= dice <= 1.0))
    assert set(seg["real_ct"]["classes"]) == {"liver", "spleen", "kidney_left", "kidney_right"}
    # the real CT never trained on: scored on the classes trained and present there, with its overlay
    test = seg["real_ct_test"]
    assert test["classes"] == ["spleen", "liver", "stomach", "aorta", "pancreas"]
    assert set(test["per_class"]) == set(test["classes"]) and test["cases"][0]["path"].endswith("example_ct_dicom")
    assert all(v["dice"] is None or 0.0 <= v["dice"] <= 1.0 for v in test["per_class"].values())
    assert test["volumes_ml"]["liver"]["reference_ml"] > 300 and (out / "seg" / "real_ct_test").is_dir()
    training = json.loads((out / "runs" / "seg-train.json").read_text())
    assert {"example-ct", "aorta-report"} <= {e["dataset"] for e in training["training"]}
    assert "example_ct_dicom" not in json.dumps(training)  # never trained on

    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # confusion matrices, attention maps, CT overlays
    assert "figure missing" not in html and "MoE vs one expert, pair by pair" in html
    assert "Real CT never trained on" in html and html.count("data:image/png;base64,") >= 5
    assert "unseen real DICOM series (never trained on): liver" in printed
    assert (out / "seg" / "real_ct_mask.nii.gz").is_file()
