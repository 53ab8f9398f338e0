"""Class-balanced patch centres and out-of-bounds-safe crops of (memory-mapped) volumes.

A patch is centred on a random location of a random group (the body, and each labelled class present; with
``edge`` also the body's outer surface), every group equally likely, as MONAI's
``RandCropByLabelClassesd`` and nnU-Net's foreground oversampling do: a kidney is as likely a centre as the
liver, which is 10x larger. The centres come from MONAI (``generate_label_classes_crop_centers``); the crop
reads only the patch's voxels from the array (a memory map stays on disk) and pads with zeros where the
patch leaves the volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from monai.transforms.utils import generate_label_classes_crop_centers


def centre_groups(locations: Mapping[str, np.ndarray], is_class: np.ndarray, *, edge: bool = False) -> list[np.ndarray]:
    """The location groups patches are centred on: ``[background, class id a, class id b, ...]`` (+ edge).

    Args:
        locations: :func:`~medmoe.seg.cache.class_locations` of a volume.
        is_class: (max_id + 1,) bool, True for label ids that map to a trained class of the volume's dataset;
            locations of other ids count as background.
        edge: add the body's outer surface as one more group (patches that show where the body ends).
    """
    background = [locations["body"]]
    groups = []
    for key, indices in locations.items():
        if key in ("body", "edge"):
            continue
        value = int(key)
        (groups if value < len(is_class) and is_class[value] else background).append(indices)
    out = [np.concatenate(background), *groups]
    if edge and "edge" in locations:
        out.append(locations["edge"])
    return out


def patch_starts(shape: Sequence[int], patch: Sequence[int], groups: Sequence[np.ndarray], count: int,
                 rng: np.random.RandomState) -> list[tuple[int, int, int]]:
    """``count`` patch corners (may be negative or run past the end when the volume is smaller than the patch).

    Centres are drawn with every non-empty group equally likely; a patch stays inside the volume along every
    axis that is at least as long as the patch, and is centred on a shorter axis. With no location at all
    (an empty volume) patches are centred on the volume.
    """
    shape, patch = tuple(int(s) for s in shape), tuple(int(p) for p in patch)
    padded = tuple(max(s, p) for s, p in zip(shape, patch))
    before = np.array([(q - s) // 2 for q, s in zip(padded, shape)])
    nonempty = [g for g in groups if len(g)]
    if not nonempty:
        return [tuple(int(s // 2 - p // 2) for s, p in zip(shape, patch))] * count
    # indices are flat in the volume; MONAI works in the (virtually) padded volume
    shifted = [np.ravel_multi_index(tuple(np.add(np.unravel_index(g, shape), before[:, None])), padded)
               for g in nonempty]
    centres = generate_label_classes_crop_centers(patch, count, padded, shifted, rand_state=rng, warn=False)
    return [tuple(int(c) - p // 2 - int(b) for c, p, b in zip(centre, patch, before)) for centre in centres]


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array[:, start:start + size]`` over the three trailing axes, zero-padded outside the array.

    Reads only the overlapping voxels (so a memory-mapped array stays on disk) and returns a new
    contiguous array of shape ``(C, *size)`` with ``array``'s dtype.
    """
    out = np.zeros((array.shape[0], *size), dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, n, dim in zip(start, size, array.shape[1:]):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out
