"""Partial-label BCE + Dice."""

import pytest
import torch

from medmoe.errors import InvalidInputError
from medmoe.seg.loss import partial_label_loss, per_class_losses


def _batch(seed=0, b=2, k=3, size=(4, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, *size, generator=g, requires_grad=True)
    target = (torch.rand(b, k, *size, generator=g) > 0.6).float()
    return logits, target


@pytest.mark.parametrize("reduction", ["batch", "sample"])
def test_unlabelled_classes_get_no_gradient(reduction):
    logits, target = _batch()
    mask = torch.tensor([[True, False, True], [False, True, True]])
    losses = partial_label_loss(logits, target, mask, dice_reduction=reduction)
    (losses["bce_loss"] + losses["dice_loss"]).backward()
    grad = logits.grad.flatten(2).abs().sum(2)
    assert (grad[~mask] == 0).all()
    assert (grad[mask] > 0).all()


def test_unlabelled_targets_do_not_change_the_loss():
    logits, target = _batch()
    mask = torch.tensor([[True, False, True], [True, True, False]])
    other = target.clone()
    other[0, 1] = 1 - other[0, 1]
    other[1, 2] = 1.0
    a = partial_label_loss(logits, target, mask)
    b = partial_label_loss(logits, other, mask)
    assert torch.equal(a["bce_loss"], b["bce_loss"]) and torch.equal(a["dice_loss"], b["dice_loss"])
    c = partial_label_loss(logits, other, torch.ones(2, 3, dtype=torch.bool))
    assert not torch.equal(a["dice_loss"], c["dice_loss"])


def test_values_against_hand_computation():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0]]])  # sigmoid = 0.5
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    bce, dice = per_class_losses(logits, target, smooth=1.0)
    assert bce.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert dice.item() == pytest.approx(1 - (2 * 1.0 + 1) / (2.0 + 2.0 + 1))
    losses = partial_label_loss(logits, target, torch.tensor([[True]]), bce_weight=2.0, dice_weight=0.5)
    assert losses["bce_loss"].item() == pytest.approx(2 * bce.item())
    assert losses["dice_loss"].item() == pytest.approx(0.5 * dice.item())


def test_batch_dice_pools_samples_and_sample_dice_averages_them():
    logits = torch.tensor([[[9.0, 9.0, -9.0, -9.0]], [[9.0, -9.0, -9.0, -9.0]]])  # (B=2, K=1, 4)
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    mask = torch.ones(2, 1, dtype=torch.bool)
    p = torch.sigmoid(logits)
    pooled = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    batch = partial_label_loss(logits, target, mask, dice_reduction="batch")["dice_loss"]
    assert batch.item() == pytest.approx(pooled.item(), rel=1e-5)
    per_sample = partial_label_loss(logits, target, mask, dice_reduction="sample")["dice_loss"]
    empty_sample = 1 - 1 / (p[1].sum() + 1)  # an empty target's Dice only rewards predicting nothing
    assert per_sample.item() == pytest.approx(((1 - (2 * (p[0] * target[0]).sum() + 1) / (p[0].sum() + 2 + 1))
                                               + empty_sample).item() / 2, rel=1e-5)
    assert per_sample > batch
    with pytest.raises(InvalidInputError, match="dice_reduction"):
        partial_label_loss(logits, target, mask, dice_reduction="mean")


def test_confident_correct_prediction_has_small_loss():
    _, target = _batch()
    logits = (target * 2 - 1) * 20
    losses = partial_label_loss(logits, target, torch.ones(2, 3, dtype=torch.bool))
    assert losses["bce_loss"] < 1e-6 and losses["dice_loss"] < 1e-3


def test_absent_labelled_class_pushes_prediction_down():
    logits = torch.full((1, 1, 8), 2.0, requires_grad=True)
    losses = partial_label_loss(logits, torch.zeros(1, 1, 8), torch.tensor([[True]]))
    (losses["bce_loss"] + losses["dice_loss"]).backward()
    assert (logits.grad > 0).all()


def test_nothing_labelled_gives_zero_with_graph_and_no_device_read():
    from medmoe.train.host_reads import HostReadCounter

    logits, target = _batch()
    with HostReadCounter() as reads:
        losses = partial_label_loss(logits, target, torch.zeros(2, 3, dtype=torch.bool))
    assert reads.total == 0, reads.calls
    assert losses["bce_loss"].item() == 0 and losses["dice_loss"].item() == 0
    (losses["bce_loss"] + losses["dice_loss"]).backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_half_precision_logits_are_computed_in_fp32():
    logits, target = _batch()
    losses = partial_label_loss(logits.detach().to(torch.bfloat16), target, torch.ones(2, 3, dtype=torch.bool))
    assert losses["bce_loss"].dtype == torch.float32


@pytest.mark.parametrize("target_shape, mask_shape, match", [
    ((2, 3, 4, 5), (2, 3), "differ in shape"),
    ((2, 3, 4, 5, 6), (3, 2), "label_mask must be"),
])
def test_shape_errors(target_shape, mask_shape, match):
    logits = torch.zeros(2, 3, 4, 5, 6)
    with pytest.raises(InvalidInputError, match=match):
        partial_label_loss(logits, torch.zeros(target_shape), torch.ones(mask_shape, dtype=torch.bool))


def test_batch_dice_leaves_classes_absent_from_the_batch_to_bce():
    """A rare class (a tumour) absent from a batch must not get the empty-target Dice, whose pull to zero
    (~1 per unit of predicted mass) would drown the pull up from the batches that hold it; BCE still applies."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 64, generator=g, requires_grad=True)
    target = torch.zeros(2, 2, 64)
    target[0, 0, :20] = 1.0  # class 0 present, class 1 absent from both samples
    mask = torch.ones(2, 2, dtype=torch.bool)
    losses = partial_label_loss(logits, target, mask)
    only_present = partial_label_loss(logits[:, :1], target[:, :1], mask[:, :1])
    assert losses["dice_loss"].item() == pytest.approx(only_present["dice_loss"].item(), rel=1e-6)
    (losses["bce_loss"] + losses["dice_loss"]).backward()
    bce_only = torch.sigmoid(logits[:, 1].detach()) / (64 * 4)  # d BCE / d logit of the absent class
    torch.testing.assert_close(logits.grad[:, 1], bce_only, rtol=1e-5, atol=1e-8)
    # the Universal Model's per-sample Dice keeps every labelled pair, empty targets included
    sample = partial_label_loss(logits, target, mask, dice_reduction="sample")["dice_loss"]
    assert sample.item() > losses["dice_loss"].item()


@pytest.mark.parametrize("reduction", ["batch", "sample"])
def test_loss_terms_of_float32_inputs_equal_their_float32_values_under_bf16_autocast(reduction):
    logits, target = _batch(seed=3, size=(6, 7, 8))
    logits = logits.detach() * 4
    mask = torch.tensor([[True, False, True], [True, True, True]])
    reference = partial_label_loss(logits, target, mask, dice_reduction=reduction)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = partial_label_loss(logits, target, mask, dice_reduction=reduction)
    for name, value in losses.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference[name], atol=1e-5, rtol=0, msg=name)

