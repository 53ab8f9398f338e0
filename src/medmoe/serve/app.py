"""The Gradio page of `medmoe serve`: one tab per service, every error shown in the page.

A handler never lets an exception reach Gradio: a medmoe error (a bad upload, an unknown class, an empty
query) becomes the tab's message and a warning toast, and the tab's outputs are cleared so that nothing
stale looks like the answer; any other exception is logged with its traceback and shown as an internal
error. The server keeps answering either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page phones nowhere

import gradio as gr  # noqa: E402

from medmoe.errors import MedMoEError  # noqa: E402
from medmoe.serve.classify import DEFAULT_CLASSES  # noqa: E402
from medmoe.serve.search import MAX_K  # noqa: E402
from medmoe.serve.services import Services  # noqa: E402

logger = logging.getLogger(__name__)

TITLE = "medmoe"
MAX_CHECKBOXES = 24
CSS = """
#search-status, #classify-status, #segment-status { min-height: 1.5em; }
.medmoe-error { color: #b91c1c; font-weight: 600; }
"""


def failure(action: str, err: BaseException) -> str:
    """The message a tab shows for an exception: medmoe errors as they are, anything else as internal."""
    if isinstance(err, MedMoEError):
        text = str(err)
    else:
        logger.exception("%s failed", action)
        text = f"internal error ({type(err).__name__}: {err}); the server log has the details"
    gr.Warning(f"{action}: {text}")
    return f'<span class="medmoe-error">Could not {action}:</span> {text}'


# ---------------------------------------------------------------------------------------------- handlers
def _search_handler(services: Services):
    def run(query, k):
        try:
            result = services.search(query, k)
        except Exception as err:  # noqa: BLE001 - every failure becomes a message in the page
            return [], [], failure("search", err)
        return result.thumbnails, result.rows, result.message(" ".join(str(query).split()))

    return run


def _classify_handler(services: Services):
    def run(upload, classes, text):
        try:
            result = services.classify(upload, classes, text)
        except Exception as err:  # noqa: BLE001
            return None, None, [], failure("classify the image", err)
        name = os.path.basename(getattr(upload, "name", upload))
        return result.probabilities, result.expert_probabilities, result.attention, result.message(name)

    return run


def _segment_handler(services: Services):
    def run(upload, selected, free_text, fast):
        try:
            view = services.segment(upload, selected, free_text, fast)
        except Exception as err:  # noqa: BLE001
            return (None, None, gr.Slider(visible=False), "", None, failure("segment the CT", err))
        z = view.best_slice()
        name = os.path.basename(getattr(upload, "name", upload))
        slider = gr.Slider(minimum=0, maximum=view.depth - 1, value=z, step=1, visible=True,
                           label=f"axial slice (0 = inferior, {view.depth - 1} = superior)")
        return (view, view.render(z), slider, view.legend_html(), [str(view.mask_file), str(view.summary_file)],
                view.message(name))

    return run


def _render_slice(view, z):
    if view is None:  # nothing segmented yet, or the session's result expired
        return None
    try:
        return view.render(int(z))
    except Exception as err:  # noqa: BLE001
        failure("draw the slice", err)
        return None


# ---------------------------------------------------------------------------------------------- tabs
@contextmanager
def _tab(title: str, key: str, intro: str) -> Iterator[None]:
    """A tab of the page (``id`` ``key``, element ``tab-<key>``) that opens with its ``intro`` text."""
    with gr.Tab(title, id=key, elem_id=f"tab-{key}"):
        gr.Markdown(intro)
        yield


def _search_tab(services: Services) -> None:
    with _tab("Search", "search",
              "Text \u2192 image search over the index: the images whose embeddings are closest to the "
              "text's, best first, with their cosine score and report."):
        with gr.Row():
            query = gr.Textbox(label="find images showing", placeholder="e.g. pleural effusion", scale=4,
                               elem_id="search-query")
            k = gr.Slider(1, MAX_K, value=12, step=1, label="results", scale=1, elem_id="search-k")
        button = gr.Button("Search", variant="primary", elem_id="search-button")
        status = gr.Markdown(elem_id="search-status")
        gallery = gr.Gallery(label="results", columns=6, height="auto", object_fit="contain",
                             elem_id="search-gallery")
        table = gr.Dataframe(headers=["rank", "score", "id", "report"], label="hits", wrap=True,
                             interactive=False, elem_id="search-table")
        handler = _search_handler(services)
        for event in (button.click, query.submit):
            event(handler, [query, k], [gallery, table, status], concurrency_id="model")


def _classify_tab(services: Services) -> None:
    with _tab("Classify", "classify",
              "Zero-shot classification of one image (PNG, JPEG or DICOM) against your class names; the "
              "expert the image router chose; the word\u2013region attention of a report or prompt over "
              "the image (empty: the top class's prompt)."):
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image (PNG, JPEG, DICOM)", type="filepath", elem_id="classify-upload")
                classes = gr.Textbox(label="classes (comma-separated)", value=DEFAULT_CLASSES, lines=2,
                                     elem_id="classify-classes")
                text = gr.Textbox(label="report or prompt for the attention map (optional)", lines=2,
                                  elem_id="classify-text")
                button = gr.Button("Classify", variant="primary", elem_id="classify-button")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="classify-status")
                with gr.Row():
                    label = gr.Label(label="class probabilities", num_top_classes=10, elem_id="classify-label")
                    experts = gr.Label(label="router: expert probabilities", num_top_classes=10,
                                       elem_id="classify-experts")
                attention = gr.Gallery(label="word\u2013region attention", columns=4, height="auto",
                                       object_fit="contain", elem_id="classify-attention")
        button.click(_classify_handler(services), [upload, classes, text], [label, experts, attention, status],
                     concurrency_id="model")


def _segment_tab(services: Services) -> None:
    classes = services.seg_classes()
    with _tab("Segment", "segment",
              "Text-prompted CT segmentation with MoME: upload a NIfTI (.nii, .nii.gz) or a .zip of one "
              "DICOM series, choose classes, browse the axial slices with the masks, download the label "
              "map (value i = i-th class, on the CT's own grid) and its summary."):
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="CT (.nii, .nii.gz, .zip of a DICOM series)", type="filepath",
                                 elem_id="segment-upload")
                if len(classes) <= MAX_CHECKBOXES:
                    chosen = gr.CheckboxGroup(classes, value=classes[:4], label="classes", elem_id="segment-classes")
                else:  # a model that records no trained classes offers the whole template: a searchable list
                    chosen = gr.Dropdown(classes, value=classes[:4], multiselect=True, label="classes",
                                         elem_id="segment-classes")
                extra = gr.Textbox(label="more classes (comma-separated names; synonyms resolve)",
                                   elem_id="segment-extra")
                fast = gr.Checkbox(label="fast (half resolution, coarser masks)", value=False, elem_id="segment-fast")
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                files = gr.File(label="label map and summary", file_count="multiple", interactive=False,
                                elem_id="segment-download")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="segment-status")
                view = gr.State(time_to_live=3600)
                picture = gr.Image(label="overlay", type="numpy", interactive=False, elem_id="segment-overlay")
                slider = gr.Slider(0, 1, value=0, step=1, label="axial slice", visible=False,
                                   elem_id="segment-slice")
                legend = gr.HTML(elem_id="segment-legend")
        button.click(_segment_handler(services), [upload, chosen, extra, fast],
                     [view, picture, slider, legend, files, status], concurrency_id="seg")
        slider.change(_render_slice, [view, slider], picture, show_progress="hidden", concurrency_limit=4)


def build_app(services: Services) -> gr.Blocks:
    """The page: a header naming what is loaded, then the tabs the services support."""
    style = {} if "css" in _launch_parameters() else {"css": CSS}  # Gradio 5 styles the Blocks, 6 the launch
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600), **style) as app:
        loaded = [what for what, ok in (("search", services.can_search), ("classification", services.can_classify),
                                        ("segmentation", services.can_segment)) if ok]
        gr.Markdown(f"## medmoe\n{', '.join(loaded).capitalize()} on `{services.device}`. Uploads stay on this "
                    "machine.", elem_id="header")
        with gr.Tabs():
            if services.can_search:
                _search_tab(services)
            if services.can_classify:
                _classify_tab(services)
            if services.can_segment:
                _segment_tab(services)
    return app


def launch(services: Services, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Build the page and serve it on ``host:port`` (queue of one job at a time per model)."""
    app = build_app(services)
    app.queue(default_concurrency_limit=1)
    optional = {"css": CSS, "footer_links": [], "ssr_mode": False}  # not every supported Gradio has each
    accepted = _launch_parameters()
    return app.launch(server_name=host, server_port=port, max_file_size=services.limits.max_bytes,
                      allowed_paths=[str(services.workdir)], show_error=False, inbrowser=False,
                      prevent_thread_lock=not block, quiet=False,
                      **{k: v for k, v in optional.items() if k in accepted})


def _launch_parameters() -> set[str]:
    import inspect

    return set(inspect.signature(gr.Blocks.launch).parameters)
