"""`medmoe serve`: a local web page (Gradio) over a MedMoE model, a search index and a MoME model.

Tabs, one module each; every tab's work is a plain function of the model and the uploaded file, so it is
tested without a browser:

- :mod:`medmoe.serve.search`: text -> image search over a saved index (thumbnails, scores, reports);
- :mod:`medmoe.serve.classify`: zero-shot classification of one uploaded image, the router's chosen
  expert and the word-region attention of a report or prompt over the image;
- :mod:`medmoe.serve.segment`: text-prompted CT segmentation of an uploaded NIfTI or zipped DICOM series,
  an axial slice viewer with coloured masks and the label map to download.

:mod:`medmoe.serve.uploads` checks uploads (size, type, zip contents) before anything decodes them, and
:mod:`medmoe.serve.app` builds the page and turns every error into a message in the page.
"""
