import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medmoe.align.probe import linear_probe, subsample
from medmoe.align.retrieval import precision_at_k, retrieval_metrics, retrieval_ranks, top_k
from medmoe.align.zeroshot import ZeroShotClassifier, classification_metrics, label_prompts


def embeddings(n, e=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, e, generator=g), dim=-1)


def brute_ranks(q, g):
    scores = q @ g.t()
    return torch.tensor([1 + int((scores[i] > scores[i, i]).sum()) for i in range(len(q))])


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_ranks_equal_the_full_matrix(chunk):
    img, txt = embeddings(50), embeddings(50, seed=1)
    txt = F.normalize(txt + 0.8 * img, dim=-1)  # some signal so ranks vary
    assert torch.equal(retrieval_ranks(img, txt, chunk_size=chunk), brute_ranks(img, txt))


def test_recall_and_rank_statistics_on_a_known_case():
    img = torch.eye(4)
    txt = torch.eye(4)[[0, 1, 3, 2]]  # pairs 2 and 3 are swapped
    m = retrieval_metrics(img, txt, ks=(1, 2))
    assert m["image_to_text"]["R@1"] == 0.5 and m["image_to_text"]["R@2"] == 1.0
    assert m["text_to_image"]["mean_rank"] == pytest.approx((1 + 1 + 2 + 2) / 4)


@pytest.mark.parametrize("chunk", [3, 64])
def test_top_k_torch_and_faiss_agree(chunk):
    q, g = embeddings(30, seed=2), embeddings(45, seed=3)
    expected = (q @ g.t()).topk(5, dim=1).indices
    assert torch.equal(top_k(q, g, 5, chunk_size=chunk, use_faiss=False), expected)
    assert torch.equal(top_k(q, g, 5, chunk_size=chunk, use_faiss=True), expected)


def test_precision_at_k_counts_shared_labels():
    neighbors = torch.tensor([[1, 2, 0], [0, 2, 1]])
    labels = [["a"], ["a", "b"], ["c"]]
    p = precision_at_k(neighbors, labels[:2], labels, ks=(1, 3))
    assert p["P@1"] == pytest.approx((1 + 1) / 2)
    assert p["P@3"] == pytest.approx((2 / 3 + 2 / 3) / 2)


class FakeTextModel:
    """encode_text maps a prompt to a fixed normalised vector per first word."""

    table = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]}

    def encode_text(self, texts):
        return F.normalize(torch.tensor([self.table[t.split()[0]] for t in texts]), dim=-1)


def test_prompt_ensemble_is_the_renormalised_mean_and_scores_are_cosines():
    clf = ZeroShotClassifier.from_prompts(FakeTextModel(), {"x": ["a 1", "c 2"], "y": ["b"]})
    expected_x = F.normalize(torch.tensor([1.0, 0.0]) + F.normalize(torch.tensor([1.0, 1.0]), dim=0), dim=0)
    assert torch.allclose(clf.weights[0], expected_x)
    scores = clf.logits(torch.tensor([[0.0, 1.0]]))
    assert scores.argmax().item() == 1
    assert label_prompts(["pleural_effusion"], ("{} seen.",)) == {"pleural_effusion": ["pleural effusion seen."]}


def test_classification_metrics_accuracy_and_auroc():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = classification_metrics(scores, ["a", "b", "b", ["a", "b"]], ["a", "b"])
    assert m["n_accuracy"] == 3 and m["accuracy"] == pytest.approx(2 / 3)
    assert m["auroc"]["a"] == pytest.approx(0.75)  # a-positives {0, 3} vs negatives {1, 2}


def test_linear_probe_learns_separable_classes_and_subsamples_every_class():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5)) * 4
    y = np.repeat(["p", "q", "r"], 100)
    x = centers[np.repeat([0, 1, 2], 100)] + rng.normal(size=(300, 5))
    idx = subsample(y, 0.01, seed=0)
    assert sorted(set(y[idx])) == ["p", "q", "r"]
    res = linear_probe(x[::2], y[::2], x[1::2], y[1::2], fractions=(0.02, 1.0))
    assert res["100%"]["accuracy"] > 0.95 and res["100%"]["n_train"] == 150
    assert res["2%"]["n_train"] == 3
