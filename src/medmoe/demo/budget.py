"""How much the demo trains: a quick smoke budget and the default one, sized for a 2-core CPU."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DemoBudget:
    """Sizes and step counts of one demo run.

    Attributes:
        n_per_modality: generated images per modality in the modality benchmark.
        iu_limit: IU chest X-ray reports used (None: all 3,927).
        align_steps, align_batch, align_lr, align_warmup: MedMoE training (both the MoE and the baseline).
        align_model: the registered MedMoE model both are built from. ``medmoe-effnet-nano`` (ImageNet
            EfficientNet-Lite0): 3 seeds on the modality benchmark put it at text->image R@5 41.9 % and 64 %
            real-image routing, against 22.6 % and 38 % for the random-weight Swin ``medmoe-nano``
            (docs/align.md), at about 1.5 times the training time per step.
        align_eval_max: test pairs evaluated per manifest (None: all).
        align_probe: run the linear probe (embeds the training split too).
        seg_quick_data: build the small phantom pack.
        seg_steps, seg_batch, seg_lr, seg_warmup: MoME training.
        seg_spacing, seg_patch: MoME training geometry (mm, voxels).
        seg_eval_cases: held-out phantoms scored.
        seg_overlap: sliding-window overlap at evaluation and prediction.
        seg_soft_labels: train MoME against partial-volume class fractions (suits coarse spacings).
        seg_augmentation: MoME's training augmentation preset (``light``, ``strong`` or ``none``; see
            :class:`~medmoe.seg.transforms.Augmentation` and docs/seg.md, "Real CTs").
        seg_overrides: mome-nano config fields changed for the demo.
    """

    n_per_modality: int
    iu_limit: int | None
    align_steps: int
    align_batch: int
    align_lr: float
    align_warmup: int
    align_eval_max: int | None
    align_probe: bool
    seg_quick_data: bool
    seg_steps: int
    seg_batch: int
    seg_lr: float
    seg_warmup: int
    seg_spacing: tuple[float, float, float]
    seg_patch: tuple[int, int, int]
    seg_eval_cases: int | None
    seg_overlap: float
    seg_soft_labels: bool = False
    seg_augmentation: str = "light"
    align_model: str = "medmoe-effnet-nano"
    seg_overrides: dict = field(default_factory=dict)


QUICK = DemoBudget(
    n_per_modality=30, iu_limit=120, align_steps=4, align_batch=16, align_lr=1e-3, align_warmup=1,
    align_eval_max=32, align_probe=False, seg_quick_data=True, seg_steps=2, seg_batch=1, seg_lr=2e-3,
    seg_warmup=1, seg_spacing=(8.0, 8.0, 8.0), seg_patch=(32, 32, 32), seg_eval_cases=1, seg_overlap=0.0,
    seg_soft_labels=True,
)

FULL = DemoBudget(
    n_per_modality=150, iu_limit=600, align_steps=200, align_batch=32, align_lr=1e-3, align_warmup=20,
    align_eval_max=None, align_probe=True, seg_quick_data=False, seg_steps=300, seg_batch=2, seg_lr=2e-3,
    seg_warmup=30, seg_spacing=(6.0, 6.0, 6.0), seg_patch=(64, 32, 32), seg_eval_cases=None, seg_overlap=0.25,
    seg_soft_labels=True,
)
