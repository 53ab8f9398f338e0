"""`medmoe align index` / `search`: a saved FAISS index over a manifest, resumable and under torchrun."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit.align import tiny_model, write_tiny_manifest

import medmoe.align.index as index_module
from medmoe.align.faiss_index import EXACT_BELOW, IVFPQ_FROM, build_faiss, choose_index, search_faiss
from medmoe.align.index import Hit, SearchIndex, build_index
from medmoe.align.index_parts import merge_parts, part_path
from medmoe.cli.main import main as cli
from medmoe.errors import InvalidInputError

QUERIES = ["pleural effusion at the lung base", "bright nodule on CT", "normal study"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_tiny_manifest(tmp_path_factory.mktemp("data"), n_per_modality=8)  # 16 pairs + 1 broken


@pytest.fixture(scope="module")
def model():
    return tiny_model().eval()


@pytest.fixture(scope="module")
def exact(tmp_path_factory, manifest, model):
    out = tmp_path_factory.mktemp("idx") / "exact"
    build_index(model, manifest, out, chunk_size=5, progress=False, model_name="tiny")
    return out


def brute_force(vectors, queries, k):
    scores = queries @ vectors.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], np.sort(scores, axis=1)[:, ::-1][:, :k]


def test_index_folder_holds_meta_items_errors_and_the_embeddings(exact, manifest, model):
    index = SearchIndex.load(exact)
    meta = index.meta
    assert meta["kind"] == "exact" and meta["n"] == 16 and meta["dim"] == 24 and meta["model"] == "tiny"
    assert meta["targets"] == ["images", "reports"] and meta["unreadable"] == 1
    assert meta["indexes"]["reports"]["n"] == 16 and "created" in meta
    items = [json.loads(line) for line in (exact / "items.jsonl").read_text().splitlines()]
    assert len(items) == 16 and items == index.items
    assert items[0]["id"] == "1" and items[0]["path"].endswith("xray_00.png")  # the manifest's data row
    assert items[1]["report"] == "CT abdomen: small bright nodule in the right lobe."
    assert (exact / "errors.csv").read_text().splitlines()[1].startswith(str(manifest.parent / "broken.png"))

    # every image and report embedding equals the model's on the same image / text
    merged = merge_parts(exact, 4)
    from medmoe.data.dataset import ImageReportDataset
    dataset = ImageReportDataset(manifest, image_size=64)
    images = torch.stack([dataset[i]["image"] for i in range(16)])
    with torch.no_grad():
        assert np.allclose(merged["images"], model.encode_image(images).numpy(), atol=1e-5)
        assert np.allclose(merged["reports"], model.encode_text([it["report"] for it in items]).numpy(), atol=1e-5)
        assert merged["experts"].tolist() == model.image_features(images)["expert_index"].tolist()


def test_search_returns_the_brute_force_ranking_with_items(exact, model):
    index = SearchIndex.load(exact)
    merged = merge_parts(exact, 4)
    with torch.no_grad():
        queries = model.encode_text(QUERIES).numpy()
    hits = index.search_text(model, QUERIES, k=5)
    rows, scores = brute_force(merged["images"], queries, 5)
    for q, query_hits in enumerate(hits):
        assert [h.rank for h in query_hits] == [1, 2, 3, 4, 5]
        assert [h.row for h in query_hits] == rows[q].tolist()
        assert [h.score for h in query_hits] == pytest.approx(scores[q].tolist(), abs=1e-5)
        assert query_hits[0] == Hit(rank=1, score=query_hits[0].score, row=rows[q][0], id=str(rows[q][0] + 1),
                                    path=index.items[rows[q][0]]["path"], report=index.items[rows[q][0]]["report"])
    # image -> text over the report embeddings; k larger than the gallery gives all of it
    image_hits = index.search(merged["images"][:2], k=50, target="reports")
    assert [len(h) for h in image_hits] == [16, 16]
    want = merged["images"][0] @ merged["reports"].T  # reports repeat: compare scores, ties in any order
    assert [h.score for h in image_hits[0]] == pytest.approx(sorted(want, reverse=True), abs=1e-5)
    assert [h.score for h in image_hits[0]] == pytest.approx(want[[h.row for h in image_hits[0]]], abs=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "pq"])
def test_forced_approximate_kinds_give_the_exact_top10(exact, tmp_path, manifest, model, kind):
    out = tmp_path / kind
    for part in (exact / "parts").iterdir():  # reuse the embedded chunks: only the index is built
        (out / "parts").mkdir(parents=True, exist_ok=True)
        (out / "parts" / part.name).write_bytes(part.read_bytes())
    (out / "build.json").write_bytes((exact / "build.json").read_bytes())
    build_index(model, manifest, out, kind=kind, chunk_size=5, progress=False, model_name="tiny")
    approx, reference = SearchIndex.load(out), SearchIndex.load(exact)
    assert approx.meta["kind"] == kind and approx.meta["params"] == choose_index(16, 24, kind).params
    for target in ("images", "reports"):
        got = approx.search_text(model, QUERIES, k=10, target=target)
        want = reference.search_text(model, QUERIES, k=10, target=target)
        # items of the same report tie in the report index: compare their texts there
        field = "row" if target == "images" else "report"
        assert [[getattr(h, field) for h in q] for q in got] == [[getattr(h, field) for h in q] for q in want]
        assert np.allclose([[h.score for h in q] for q in got], [[h.score for h in q] for q in want], atol=1e-5)


def test_approximate_kinds_match_exact_on_a_clustered_gallery():
    """4,000 vectors in 40 clusters (as embeddings group by modality and finding): IVF, HNSW and PQ with
    the chosen parameters return exactly the exact top-10 of 200 queries."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, 32)).astype(np.float32)
    x = centers[rng.integers(0, 40, 4000)] + 0.35 * rng.standard_normal((4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.choice(4000, 200, replace=False)] + 0.1 * rng.standard_normal((200, 32)).astype(np.float32)
    plan = choose_index(4000, 32, "exact")
    _, truth = search_faiss(build_faiss(x, plan), plan, queries, 10)
    assert (truth == brute_force(x, queries, 10)[0]).mean() > 0.99  # ties aside, FAISS exact is brute force
    for kind in ("ivf", "hnsw", "pq"):
        plan = choose_index(4000, 32, kind)
        _, rows = search_faiss(build_faiss(x, plan), plan, queries, 10)
        assert np.array_equal(rows, truth), kind


def test_kind_and_parameters_chosen_by_size():
    assert choose_index(EXACT_BELOW - 1, 96).kind == "exact"
    pq = choose_index(EXACT_BELOW, 96)
    assert pq.kind == "pq" and pq.params == {"factory": "PQ48x4fs,RFlat", "m": 48, "nbits": 4, "k_factor": 64}
    assert choose_index(5_000_000, 96).params["k_factor"] == 128
    big = choose_index(IVFPQ_FROM, 96)
    assert big.kind == "ivfpq" and big.params["nlist"] == 16384 and big.params["m"] == 24
    assert choose_index(1_000_000, 96, "ivf").params == {"factory": "IVF4096,Flat", "nlist": 4096, "nprobe": 512}
    assert choose_index(1000, 96, "ivf").params["nlist"] == 16  # at least 39 training points a list
    assert choose_index(1_000_000, 96, "hnsw").params["efSearch"] == 640
    assert choose_index(10, 96, "pq").kind == "exact"
    with pytest.raises(InvalidInputError, match="index kind 'annoy'"):
        choose_index(10, 96, "annoy")


def test_interrupted_build_resumes_at_the_missing_chunks_with_identical_embeddings(exact, tmp_path, manifest, model,
                                                                                  monkeypatch):
    out = tmp_path / "resumed"
    embedded = []
    real_embed = index_module.embed_chunk

    def embed_and_count(model, gallery, chunk, **kwargs):
        if chunk == 2 and not embedded.count("stop"):
            embedded.append("stop")
            raise KeyboardInterrupt  # killed while embedding the third chunk
        embedded.append(chunk)
        return real_embed(model, gallery, chunk, **kwargs)

    monkeypatch.setattr(index_module, "embed_chunk", embed_and_count)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, manifest, out, chunk_size=5, progress=False, model_name="tiny")
    assert [p.name for p in sorted((out / "parts").iterdir())] == ["part-000000.npz", "part-000001.npz"]
    with pytest.raises(InvalidInputError, match="unfinished build"):
        SearchIndex.load(out)
    before = part_path(out, 0).stat().st_mtime_ns
    build_index(model, manifest, out, chunk_size=5, progress=False, model_name="tiny")
    assert embedded == [0, 1, "stop", 2, 3]
    assert part_path(out, 0).stat().st_mtime_ns == before
    resumed, fresh = merge_parts(out, 4), merge_parts(exact, 4)
    for key in ("images", "reports", "experts"):
        assert np.array_equal(resumed[key], fresh[key]), key
    assert resumed["items"] == fresh["items"]
    assert SearchIndex.load(out).meta["n"] == 16


def test_other_model_or_data_in_the_folder_is_an_error_unless_overwrite(exact, tmp_path, manifest, model):
    out = tmp_path / "idx"
    build_index(model, manifest, out, chunk_size=5, progress=False, model_name="tiny")
    other = tiny_model(embed_dim=24, local_dim=16)
    with pytest.raises(InvalidInputError, match=f"{out}: holds an index of model tiny .* use --overwrite"):
        build_index(other, manifest, out, chunk_size=5, progress=False, model_name="other")
    smaller = write_tiny_manifest(tmp_path, n_per_modality=4)
    with pytest.raises(InvalidInputError, match=f"holds an index of data {manifest}"):
        build_index(model, smaller, out, chunk_size=5, progress=False)
    build_index(model, smaller, out, chunk_size=5, progress=False, overwrite=True)
    assert SearchIndex.load(out).meta["n"] == 8
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not a search index; give a new or empty folder"):
        build_index(model, smaller, tmp_path / "stuff", progress=False)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_index_of_shards_has_a_part_per_shard_and_the_manifest_embeddings(exact, tmp_path, manifest, model):
    from medmoe.data.shards import write_shards

    written = write_shards(manifest, tmp_path / "shards", per_shard=5)  # the corrupt row is left out
    out = build_index(model, tmp_path / "shards", tmp_path / "idx", kind="hnsw", progress=False, workers=2)
    assert len(list((out / "parts").iterdir())) == len(written.shards) == 4
    index, reference = SearchIndex.load(out), SearchIndex.load(exact)
    assert index.meta["n"] == 16 and index.meta["kind"] == "hnsw"
    by_path = {it["path"]: row for row, it in enumerate(reference.items)}
    rows = [by_path[it["path"]] for it in index.items]  # each shard sample's source image
    assert sorted(rows) == list(range(16))
    assert [it["id"] for it in index.items] == [f"{r:09d}" for r in rows]  # the sample keys (manifest rows)
    shard_vectors, manifest_vectors = merge_parts(out, 4)["images"], merge_parts(exact, 4)["images"]
    assert np.allclose(shard_vectors, manifest_vectors[rows], atol=1e-5)


def test_search_errors_name_the_folder_and_the_mismatch(exact, tmp_path, model):
    index = SearchIndex.load(exact)
    with pytest.raises(InvalidInputError, match=r"query vectors of width 8: the index .* holds width 24"):
        index.search(np.ones((1, 8), np.float32))
    with pytest.raises(InvalidInputError, match="target 'texts'"):
        index.search(np.ones((1, 24), np.float32), target="texts")
    with pytest.raises(InvalidInputError, match=f"{tmp_path}: not a search index"):
        SearchIndex.load(tmp_path)
    with pytest.raises(InvalidInputError, match="model of embedding width 32"):
        index.search_text(tiny_model(embed_dim=32), ["x"])


def test_cli_index_then_search_by_text_and_by_image_as_json(tmp_path, manifest, capsys):
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    out = tmp_path / "idx"
    assert cli(["align", "index", "--model", str(model_dir), "--data", str(manifest), "--out", str(out),
                "--device", "cpu", "--chunk-size", "8", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "16 items indexed (images, reports); exact index" in printed and "1 unreadable" in printed
    assert SearchIndex.load(out).meta["model"] == str(model_dir.resolve())

    assert cli(["align", "search", "--index", str(out), "--text", QUERIES[0], "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    hits = result["queries"][0]["hits"]
    assert result["model"] == str(model_dir.resolve()) and result["queries"][0]["query"] == QUERIES[0]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    index, loaded = SearchIndex.load(out), tiny_model().eval()
    assert [h["row"] for h in hits] == [h.row for h in index.search_text(loaded, [QUERIES[0]], k=3)[0]]

    query = str(manifest.parent / "ct_03.png")
    assert cli(["align", "search", "--index", str(out), "--model", str(model_dir), "--image", query, "-k", "2",
                "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["queries"][0]["hits"]
    assert hits[0]["path"] == query and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)  # finds itself
    assert cli(["align", "search", "--index", str(out), "--image", query, "--target", "reports", "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"image '{query}' -> reports (exact index of 16 items)")
    assert len(text.splitlines()) == 3 and ("| CT abdomen" in text or "| Chest x-ray" in text)

    assert cli(["align", "search", "--index", str(out), "--image", str(tmp_path / "none.png")]) == 1
    assert f"{tmp_path / 'none.png'}" in capsys.readouterr().err


DDP_WORKER = """
import json, sys
import torch.distributed as dist
import medmoe.align.index as index_module
from medmoe.cli.main import main

model_dir, manifest, out, log = sys.argv[1:5]
real = index_module.embed_chunk
chunks = []
def record(model, gallery, chunk, **kwargs):
    chunks.append(chunk)
    return real(model, gallery, chunk, **kwargs)
index_module.embed_chunk = record
code = main(["align", "index", "--model", model_dir, "--data", manifest, "--out", out, "--chunk-size", "3",
             "--device", "cpu", "--no-progress"])
import os
with open(f"{log}/rank{os.environ['RANK']}.json", "w") as f:
    json.dump({"code": code, "chunks": chunks}, f)
"""


@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_two_process_torchrun_build_equals_the_single_process_one(exact, tmp_path, manifest, torchrun):
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)  # the weights of the `model` fixture, which built `exact`
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    torchrun(script, model_dir, manifest, tmp_path / "ddp", tmp_path, timeout=230)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["code"] for r in ranks] == [0, 0]
    assert ranks[0]["chunks"] == [0, 2, 4] and ranks[1]["chunks"] == [1, 3, 5]  # 17 rows in chunks of 3

    two, one = merge_parts(tmp_path / "ddp", 6), merge_parts(exact, 4)  # chunking does not change the result
    assert two["items"] == one["items"] and two["bad"] == one["bad"]
    for key in ("images", "reports"):
        assert np.allclose(two[key], one[key], atol=1e-6), key
    assert np.array_equal(two["experts"], one["experts"])
    a, b = SearchIndex.load(tmp_path / "ddp"), SearchIndex.load(exact)
    assert a.meta["model"] == str(model_dir.resolve())
    same = {k: v for k, v in a.meta.items() if k not in ("created", "model")}
    assert same == {k: v for k, v in b.meta.items() if k not in ("created", "model")}
    assert a.items == b.items
    queries = np.asarray(one["reports"][:4])
    assert [[h.row for h in q] for q in a.search(queries)] == [[h.row for h in q] for q in b.search(queries)]


def test_unreadable_gallery_and_bad_arguments_are_one_line_errors(tmp_path, model):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n nothing")
    manifest = tmp_path / "m.csv"
    manifest.write_text('image,report\nbroken.png,"Chest x-ray."\n')
    with pytest.raises(InvalidInputError, match=f"{manifest}: no item could be read"):
        build_index(model, manifest, tmp_path / "idx", progress=False)
    with pytest.raises(InvalidInputError, match="no such manifest"):
        build_index(model, tmp_path / "missing.csv", tmp_path / "idx2", progress=False)
    with pytest.raises(InvalidInputError, match="index kind 'flat'"):
        build_index(model, manifest, tmp_path / "idx3", kind="flat", progress=False)
    assert Path(tmp_path / "idx3").exists() is False
