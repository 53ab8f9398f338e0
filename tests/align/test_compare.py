import json

import numpy as np
import pytest

from medmoe.align.compare import compare_retrieval, paired_bootstrap, verdict
from medmoe.cli.main import main as cli
from medmoe.errors import InvalidInputError


def test_identical_systems_differ_by_nothing():
    hits = np.random.default_rng(0).random(300) < 0.1
    r = paired_bootstrap(hits, hits)
    assert r["difference"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0
    assert r["p_a_not_better"] == 1.0 and verdict(r) == "no clear difference" and r["n"] == 300


def test_interval_matches_the_normal_approximation_of_a_paired_difference():
    rng = np.random.default_rng(1)
    n = 4000
    a = rng.random(n) < 0.30
    b = np.where(rng.random(n) < 0.5, a, rng.random(n) < 0.20)   # correlated with a, as two models on one test set are
    r = paired_bootstrap(a, b, resamples=20_000, seed=3)
    d = a.astype(float) - b.astype(float)
    half = 1.959964 * d.std(ddof=1) / np.sqrt(n)
    assert r["difference"] == pytest.approx(d.mean())
    assert r["ci_low"] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert r["ci_high"] == pytest.approx(d.mean() + half, abs=0.15 * half)
    assert r["ci_low"] > 0 and verdict(r) == "A ahead" and r["p_a_not_better"] < 0.001
    flipped = paired_bootstrap(b, a, resamples=20_000, seed=3)
    assert verdict(flipped) == "B ahead" and flipped["difference"] == pytest.approx(-r["difference"])


def test_runs_are_averaged_per_item_before_resampling():
    a = np.array([[1, 0, 1, 0], [1, 1, 1, 0]])
    b = np.array([[0, 0, 1, 0], [0, 0, 1, 1]])
    r = paired_bootstrap(a, b, resamples=500)
    assert r["a"] == pytest.approx(0.625) and r["b"] == pytest.approx(0.375)
    assert r["difference"] == pytest.approx(0.25) and r["n"] == 4
    assert r["ci_low"] <= r["difference"] <= r["ci_high"]


@pytest.mark.parametrize("a, b, match", [
    (np.zeros(5), np.zeros(4), "equal length"),
    (np.zeros((2, 0)), np.zeros((2, 0)), "at least one item"),
])
def test_bad_inputs_are_named(a, b, match):
    with pytest.raises(InvalidInputError, match=match):
        paired_bootstrap(a, b)
    with pytest.raises(InvalidInputError, match="level"):
        paired_bootstrap(np.zeros(3), np.zeros(3), level=1.5)


def _metrics(paths, t2i, i2t):
    return {"n": len(paths), "items": {"paths": paths, "text_to_image_rank": t2i, "image_to_text_rank": i2t}}


def test_items_are_matched_by_path_not_by_order():
    a = _metrics(["x", "y", "z", "w"], [1, 3, 1, 7], [2, 1, 1, 1])
    b = _metrics(["z", "w", "x", "q"], [1, 1, 2, 1], [1, 1, 1, 1])
    r = compare_retrieval(a, b, ks=(1,), resamples=200)
    assert (r["n"], r["only_in_a"], r["only_in_b"]) == (3, 1, 1)
    # shared x, z, w: A hits@1 t2i (1, 1, 0), B (0, 1, 1)
    assert r["text_to_image"]["R@1"]["a"] == pytest.approx(2 / 3) and r["text_to_image"]["R@1"]["b"] == pytest.approx(2 / 3)
    # i2t: A (0, 1, 1), B (1, 1, 1)
    assert r["image_to_text"]["R@1"]["difference"] == pytest.approx(-1 / 3)


def test_missing_items_and_disjoint_sets_give_clear_errors():
    with pytest.raises(InvalidInputError, match="--per-item"):
        compare_retrieval({"n": 3, "retrieval": {}}, _metrics(["x"], [1], [1]))
    with pytest.raises(InvalidInputError, match="--per-item"):
        compare_retrieval([1, 2], _metrics(["x"], [1], [1]))  # a JSON file that is not an evaluation
    with pytest.raises(InvalidInputError, match="share no item"):
        compare_retrieval(_metrics(["x"], [1], [1]), _metrics(["y"], [1], [1]))


def test_cli_compare_prints_the_table_and_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = [f"img/{i}.png" for i in range(200)]
    a = _metrics(paths, (rng.random(200) < 0.5).astype(int).tolist(), [1] * 200)
    b = _metrics(paths, [2] * 200, [1] * 200)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "cmp" / "c.json"
    assert cli(["align", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out),
                "--resamples", "2000"]) == 0
    text = capsys.readouterr().out
    assert "200 shared test pairs" in text and "A ahead" in text and "no clear difference" in text
    result = json.loads(out.read_text())
    assert result["text_to_image"]["R@1"]["ci_low"] > 0 and result["image_to_text"]["R@1"]["difference"] == 0
    (tmp_path / "bad.json").write_text("{not json")
    assert cli(["align", "compare", str(tmp_path / "bad.json"), str(tmp_path / "b.json")]) == 1
    assert "bad.json: not a metrics JSON" in capsys.readouterr().err
    assert cli(["align", "compare", str(tmp_path / "none.json"), str(tmp_path / "b.json")]) == 1
    assert "none.json: no such metrics file" in capsys.readouterr().err
