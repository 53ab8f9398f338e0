"""medmoe_samples: the generators of medmoe's built-in sample data, kept out of the library.

- :mod:`medmoe_samples.pairs`: 2-D image-report packs (``medmoe data build-samples``): the generated modality
  benchmark, the IU chest X-ray reports with rendered radiographs, and real images from installed packages.
- :mod:`medmoe_samples.ct`: CT packs for MoME (``medmoe seg build-samples``): synthetic abdominal phantoms
  and the real example CTs of the TotalSegmentator 2.18.0 sdist.

The generators write what ``medmoe.data`` and ``medmoe.seg`` read (manifests, Decathlon-style datalists) with
their writers and vocabulary. This package imports ``medmoe``; ``medmoe``'s library never imports it (only
``medmoe.cli`` and ``medmoe.demo`` do, lazily). docs/data.md describes every pack.
"""
