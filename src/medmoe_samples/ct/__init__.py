"""CT sample packs for MoME: synthetic abdominal phantoms and the real TotalSegmentator example CTs.

- :mod:`.phantoms` renders one phantom CT with its full organ and tumour label map;
- :mod:`.phantom_pack` writes partially labelled phantom "datasets" plus held-out test phantoms;
- :mod:`.totalseg` extracts the three real example CTs of the TotalSegmentator 2.18.0 sdist;
- :mod:`.build` writes both packs under one folder (``medmoe seg build-samples``).

Each pack is a folder with a Decathlon-style ``datalist.json`` that ``medmoe.seg.data.load_datalist`` reads.
"""
