"""Exact top-k retrieval runs on the device of its embeddings."""

import torch

from medmoe.align.retrieval import top_k


def test_top_k_returns_its_indices_on_the_embeddings_device():
    """The meta device stands in for CUDA: an index built on the CPU would come back on the CPU."""
    queries, gallery = torch.randn(5, 4, device="meta"), torch.randn(7, 4, device="meta")
    assert top_k(queries, gallery, 3, chunk_size=3, use_faiss=False).device.type == "meta"


def test_top_k_over_gallery_chunks_equals_one_topk_of_all_scores():
    g = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(6, 8, generator=g), torch.randn(11, 8, generator=g)
    got = top_k(queries, gallery, 4, chunk_size=3, use_faiss=False)
    assert torch.equal(got, (queries @ gallery.t()).topk(4, dim=1).indices)
