import math

import pytest
import torch
import torch.nn.functional as F

from medmoe.align.losses import global_contrastive_loss, local_contrastive_loss, local_similarity
from medmoe.errors import InvalidInputError
from medmoe.moe import load_balance_loss, router_ce_loss, router_distillation_loss
from medmoe.train.host_reads import HostReadCounter


def gloria_by_the_equations(regions, words, lengths, t1, t2, t3):
    """GLoRIA's local loss written out scalar by scalar from the paper's equations (Huang et al., 2021).

    s_ij = e_i . v_j ; s'_ij = exp(s_ij) / sum_k exp(s_kj) (over words) ;
    a_ij = exp(t1 s'_ij) / sum_k exp(t1 s'_ik) (over regions) ; c_i = sum_j a_ij v_j ;
    Z(x_v, x_t) = log sum_i exp(t2 cos(c_i, e_i)) ;
    L = -1/B sum_b [log softmax_t(t3 Z(v_b, t))_b + log softmax_v(t3 Z(v, t_b))_b] / 2
    """
    n = len(regions)

    def z(v, e):
        s = [[sum(a * b for a, b in zip(ei, vj)) for vj in v] for ei in e]
        norm = [[math.exp(s[i][j]) / sum(math.exp(s[k][j]) for k in range(len(e))) for j in range(len(v))]
                for i in range(len(e))]
        total = 0.0
        for i, ei in enumerate(e):
            den = sum(math.exp(t1 * norm[i][k]) for k in range(len(v)))
            att = [math.exp(t1 * norm[i][j]) / den for j in range(len(v))]
            c = [sum(att[j] * v[j][d] for j in range(len(v))) for d in range(len(ei))]
            cos = sum(a * b for a, b in zip(c, ei)) / (math.sqrt(sum(a * a for a in c)) * math.sqrt(sum(a * a for a in ei)))
            total += math.exp(t2 * cos)
        return math.log(total)

    e_all = [words[b][: lengths[b]] for b in range(n)]
    zz = [[z(regions[i], e_all[t]) for t in range(n)] for i in range(n)]
    img = -sum(t3 * zz[b][b] - math.log(sum(math.exp(t3 * zz[b][t]) for t in range(n))) for b in range(n)) / n
    txt = -sum(t3 * zz[b][b] - math.log(sum(math.exp(t3 * zz[i][b]) for i in range(n))) for b in range(n)) / n
    return (img + txt) / 2, zz


@pytest.mark.parametrize("temps", [(4.0, 5.0, 10.0), (1.0, 2.0, 3.0)])
def test_local_loss_matches_a_direct_transcription_of_the_paper(temps):
    g = torch.Generator().manual_seed(0)
    b, d, h, w, max_words = 3, 5, 2, 3, 4
    local = torch.randn(b, d, h, w, generator=g, dtype=torch.float64)
    words = torch.randn(b, max_words, d, generator=g, dtype=torch.float64)
    lengths = [4, 2, 3]
    mask = torch.arange(max_words)[None] < torch.tensor(lengths)[:, None]
    words = words.masked_fill(~mask[..., None], 7.0)  # padding must not matter
    regions = local.flatten(2).transpose(1, 2).tolist()  # (B, R, D), region r = location (y, x)
    expected, zz = gloria_by_the_equations(regions, words.tolist(), lengths, *temps)
    got = local_contrastive_loss(local, words, mask, temps)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    sim = local_similarity(words, mask, local.flatten(2).transpose(1, 2), temps[0], temps[1])
    assert torch.allclose(sim, torch.tensor(zz, dtype=sim.dtype), atol=1e-9)
    chunked = local_contrastive_loss(local, words, mask, temps, chunk=2)
    assert chunked.item() == pytest.approx(expected, rel=1e-9)


def test_local_loss_leaves_out_reports_without_words_without_reading_the_device():
    g = torch.Generator().manual_seed(1)
    local = torch.randn(4, 4, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    words = torch.randn(4, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False], [False, False, False]])
    kept_rows = [0, 2]
    kept = local_contrastive_loss(local[kept_rows], words[kept_rows], mask[kept_rows])
    kept_grads = torch.autograd.grad(kept, (local, words))
    with HostReadCounter() as reads:
        loss = local_contrastive_loss(local, words, mask)
        grads = torch.autograd.grad(loss, (local, words))
    assert reads.total == 0, reads.calls
    assert torch.isfinite(kept) and loss.item() == pytest.approx(kept.item(), rel=1e-12, abs=1e-12)
    for grad, kept_grad in zip(grads, kept_grads):
        assert torch.isfinite(grad).all()
        assert torch.allclose(grad, kept_grad, rtol=1e-10, atol=1e-12)  # zero for the pairs left out


def test_local_loss_of_reports_without_any_word_is_zero_and_keeps_the_graph():
    local = torch.randn(3, 4, 2, 2, requires_grad=True)
    loss = local_contrastive_loss(local, torch.randn(3, 2, 4), torch.zeros(3, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(local.grad, torch.zeros_like(local))


def test_global_loss_is_symmetric_infonce():
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    logits = 10 * img @ txt.t()
    expected = 0.0
    for i in range(5):
        expected += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    assert global_contrastive_loss(img, txt, 10.0).item() == pytest.approx(expected.item() / 10, rel=1e-6)
    # Matched pairs give a lower loss than shuffled ones.
    assert global_contrastive_loss(img, img, 10.0) < global_contrastive_loss(img, img.roll(1, 0), 10.0)


def test_global_loss_uses_the_injected_gather_and_scales_local_gradients():
    """A fake 2-rank gather: the other rank's rows are constants; the loss equals the 2B-batch loss and
    the local rows' gradient is twice the single-process gradient (DDP halves it back)."""
    g = torch.Generator().manual_seed(3)
    mine = F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    other = F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    mine_t = F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    other_t = F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    others = iter([other, other_t])  # the loss gathers the images first, then the texts

    def gather(x):
        return torch.cat([x, next(others)])

    a = mine.clone().requires_grad_(True)
    loss = global_contrastive_loss(a, mine_t, 10.0, gather=gather)
    loss.backward()
    full_img = torch.cat([mine, other]).requires_grad_(True)
    full = global_contrastive_loss(full_img, torch.cat([mine_t, other_t]), 10.0)
    full.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(a.grad, 2 * full_img.grad[:3], atol=1e-6)


def test_loss_inputs_are_validated():
    with pytest.raises(InvalidInputError, match="both be"):
        global_contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), 1.0)
    with pytest.raises(InvalidInputError, match="word_mask"):
        local_similarity(torch.randn(2, 3, 4), torch.ones(2, 2, dtype=torch.bool), torch.randn(2, 5, 4))


def _forward_outputs(route_source="text"):
    """A MedMoE forward dict of 4 pairs (what alignment_loss reads), fixed by a seed."""
    g = torch.Generator().manual_seed(0)
    router_logits = torch.randn(4, 6, generator=g, requires_grad=True)
    return {
        "image_embeds": F.normalize(torch.randn(4, 8, generator=g), dim=-1),
        "text_embeds": F.normalize(torch.randn(4, 8, generator=g), dim=-1),
        "logit_scale": torch.tensor(10.0),
        "local_features": torch.randn(4, 8, 3, 3, generator=g),
        "word_features": torch.randn(4, 5, 8, generator=g),
        "word_mask": torch.ones(4, 5, dtype=torch.bool),
        "router_logits": router_logits,
        "router_probs": router_logits.float().softmax(-1),
        "image_router_logits": torch.randn(4, 6, generator=g, requires_grad=True),
        "expert_index": router_logits.argmax(-1),
        "route_source": route_source,
    }


def test_alignment_loss_weights_each_term_and_sums_them():
    from medmoe.align.losses import AlignLossWeights, alignment_loss
    from medmoe.moe import load_balance_loss, router_ce_loss

    out, modality = _forward_outputs(), torch.tensor([0, 3, -1, 9])
    weights = AlignLossWeights(global_loss_weight=0.3, local_loss_weight=0.7, balance_loss_weight=0.1,
                               router_ce_loss_weight=2.0, distill_loss_weight=0.5)
    terms = alignment_loss(out, weights, modality=modality, gather=lambda x: x)
    assert set(terms) == {"global_loss", "local_loss", "balance_loss", "router_ce_loss", "distill_loss", "loss"}
    assert torch.equal(terms["global_loss"], 0.3 * global_contrastive_loss(
        out["image_embeds"], out["text_embeds"], out["logit_scale"], gather=lambda x: x))
    assert torch.equal(terms["local_loss"], 0.7 * local_contrastive_loss(
        out["local_features"], out["word_features"], out["word_mask"]))
    assert torch.equal(terms["balance_loss"], 0.1 * load_balance_loss(out["router_probs"], out["expert_index"][:, None]))
    # unknown (-1) and out-of-range (9) modality ids do not count
    assert torch.equal(terms["router_ce_loss"], 2.0 * router_ce_loss(out["router_logits"], torch.tensor([0, 3, -100, -100])))
    assert torch.equal(terms["distill_loss"], 0.5 * F.cross_entropy(out["image_router_logits"], out["expert_index"]))
    assert torch.allclose(terms["loss"], sum(v for k, v in terms.items() if k != "loss"))


def test_alignment_loss_keeps_its_keys_when_a_term_has_nothing_to_do():
    from medmoe.align.losses import AlignLossWeights, alignment_loss

    by_image = alignment_loss(_forward_outputs("image"), modality=None)
    assert float(by_image["distill_loss"].detach()) == 0.0 and float(by_image["router_ce_loss"].detach()) == 0.0
    assert float(alignment_loss(_forward_outputs("label"))["balance_loss"].detach()) == 0.0
    off = AlignLossWeights(balance_loss_weight=0, router_ce_loss_weight=0, distill_loss_weight=0, local_loss_weight=0)
    assert set(alignment_loss(_forward_outputs(), off)) == {"global_loss", "loss"}
    with pytest.raises(InvalidInputError, match="distill_loss_weight must be >= 0"):
        AlignLossWeights(distill_loss_weight=-1.0)
    with pytest.raises(InvalidInputError, match="with the reports"):
        alignment_loss({"image_embeds": torch.zeros(2, 4)})


def _loss_terms(out):
    """Each of MedMoE's loss terms computed from a forward dict (unweighted)."""
    labels = torch.tensor([0, 3, -100, 1])
    return {
        "global": lambda: global_contrastive_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"],
                                                  gather=lambda x: x),
        "local": lambda: local_contrastive_loss(out["local_features"], out["word_features"], out["word_mask"]),
        "router_ce": lambda: router_ce_loss(out["router_logits"], labels),
        "balance": lambda: load_balance_loss(out["router_probs"], out["expert_index"][:, None]),
        "distill": lambda: router_distillation_loss(out["image_router_logits"], out["expert_index"]),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("term", ["global", "local", "router_ce", "balance", "distill"])
def test_each_loss_term_is_computed_in_float32_under_autocast(term, dtype):
    out = _forward_outputs()
    out["word_mask"][1, 2:] = False
    loss = _loss_terms(out)[term]
    expected = loss()
    with torch.autocast("cpu", dtype=dtype):
        got = loss()
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got.item(), expected.item())


def test_local_loss_keeps_its_value_under_fp16_autocast_when_dot_products_exceed_fp16_range():
    """Word-region dot products of unnormalised features beyond 65504 would be inf in fp16."""
    g = torch.Generator().manual_seed(3)
    local, words = 100 * torch.randn(3, 64, 2, 2, generator=g), 100 * torch.randn(3, 4, 64, generator=g)
    mask = torch.ones(3, 4, dtype=torch.bool)
    expected = local_contrastive_loss(local, words, mask)
    with torch.autocast("cpu", dtype=torch.float16):
        got = local_contrastive_loss(local, words, mask)
    assert torch.isfinite(expected) and torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
