"""Post-processing of predicted class masks: largest connected component, lesions inside their organ."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate

logger = logging.getLogger(__name__)

# Organs that are legitimately several pieces; keeping only the largest would delete real anatomy.
MULTI_COMPONENT = frozenset({"intestine", "small_bowel", "colon", "bone", "hepatic_vessel"})


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (an empty mask stays empty).

    Args:
        mask: (X, Y, Z) bool.
    """
    labelled, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask.astype(bool, copy=True)
    return labelled == int(np.bincount(labelled.reshape(-1))[1:].argmax()) + 1  # the background (0) left out


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_voxels``."""
    if min_voxels <= 1 or not mask.any():
        return mask.astype(bool, copy=True)
    labelled, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    keep = np.bincount(labelled.reshape(-1)) >= min_voxels
    keep[0] = False
    return keep[labelled]


def wants_largest_component(name: str | None, template: ClassTemplate) -> bool:
    """True for single-piece organs: kind ``organ``, not a union of parts, not in :data:`MULTI_COMPONENT`."""
    if name is None or name not in template:
        return False
    info = template.info(name)
    return info.kind == "organ" and not info.parts and name not in MULTI_COMPONENT


def lesion_region(index: int, classes: Sequence[str | None], masks: np.ndarray, template: ClassTemplate) -> np.ndarray | None:
    """Voxels of the prompted classes that make up lesion ``index``'s parent organ; None if none prompted.

    The parent may be prompted itself or through its parts (``kidney_tumour`` inside ``kidney_right`` or
    ``kidney_left``) or through a union that contains it.
    """
    parent = template.parent_organ(classes[index])
    if parent is None:
        return None
    members = template.components(parent)
    region = None
    for j, other in enumerate(classes):
        if j == index or other is None or template.is_lesion(other):
            continue
        if other in members or parent in template.components(other):
            region = masks[j].copy() if region is None else region | masks[j]
    return region


def postprocess_masks(masks: np.ndarray, classes: Sequence[str | None], template: ClassTemplate | None = None, *,
                      largest_component_organs: bool = True, lesions_inside_organ: bool = True,
                      min_lesion_voxels: int = 0) -> np.ndarray:
    """Clean thresholded masks, one class at a time.

    Organs (see :func:`wants_largest_component`) keep their largest connected component; then lesions keep
    only voxels inside their (post-processed) parent organ when the parent is among the prompted classes,
    and lesion components below ``min_lesion_voxels`` are dropped. Unknown classes (None) are left as is.

    Args:
        masks: (K, X, Y, Z) bool.
        classes: the K canonical class names (None for prompts outside the template).
        template: class template (default :meth:`ClassTemplate.default`).

    Returns:
        (K, X, Y, Z) bool (a new array).
    """
    if masks.ndim != 4 or masks.shape[0] != len(classes):
        raise InvalidInputError(f"masks of shape {masks.shape}: expected (K, X, Y, Z) with K = {len(classes)}")
    template = template or ClassTemplate.default()
    out = masks.astype(bool, copy=True)
    if largest_component_organs:
        for k, name in enumerate(classes):
            if wants_largest_component(name, template):
                out[k] = largest_component(out[k])
    for k, name in enumerate(classes):
        if name is None or name not in template or not template.is_lesion(name):
            continue
        if lesions_inside_organ:
            region = lesion_region(k, classes, out, template)
            if region is None:
                logger.debug("%s: parent organ not prompted; lesion mask left unconstrained", name)
            else:
                out[k] &= region
        if min_lesion_voxels > 1:
            out[k] = remove_small_components(out[k], min_lesion_voxels)
    return out
