"""The Gradio page of `medmoe serve`: one tab per service, every error shown in the page, a named API.

A handler never lets an exception reach Gradio: a medmoe error (a bad upload, an unknown class, an empty
query) becomes the tab's message, and the tab's outputs are cleared so that nothing stale looks like the
answer; any other exception is logged with its traceback and shown as an internal error. The server keeps
answering either way.

Search and Classify are batched (Gradio's ``batch=True``): the requests that queue while the model is busy
are answered together, their texts and images encoded as one batch each; their messages are in the tab
(a warning toast would reach only the first request of a batch). Segment runs one CT at a time and also
shows a toast. Pictures are written as files into a folder of each request's own
(:mod:`medmoe.serve.results`), never handed to Gradio as arrays.

The API endpoints are named after the tabs: ``/search`` (query, k), ``/classify`` (image, classes, text),
``/segment`` (CT, classes, more classes, fast); see docs/serve.md for a ``gradio_client`` example.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page phones nowhere

import gradio as gr  # noqa: E402

from medmoe.errors import MedMoEError  # noqa: E402
from medmoe.serve.classify import DEFAULT_CLASSES  # noqa: E402
from medmoe.serve.results import write_picture  # noqa: E402
from medmoe.serve.search import MAX_K  # noqa: E402
from medmoe.serve.services import Services  # noqa: E402

logger = logging.getLogger(__name__)

TITLE = "medmoe"
MAX_CHECKBOXES = 24
DEFAULT_BATCH = 16
# Gradio keeps a state of about 90 KB per session (a copy of every component's config), 10,000 sessions by
# default, and an API call without a session of its own (`/gradio_api/call/...`) makes a new one each time:
# at 7 answers/s the server grew by 420 MB in 9 minutes. The least recently used beyond this many are let go.
MAX_SESSIONS = 512
CSS = """
#search-status, #classify-status, #segment-status { min-height: 1.5em; }
.medmoe-error { color: #b91c1c; font-weight: 600; }
"""


def failure(action: str, err: BaseException, *, toast: bool = True) -> str:
    """The message a tab shows for an exception: medmoe errors as they are, anything else as internal
    (logged with its traceback); with ``toast`` also a warning toast."""
    if isinstance(err, MedMoEError):
        text = str(err)
    else:
        logger.error("%s failed", action, exc_info=err)
        text = f"internal error ({type(err).__name__}: {err}); the server log has the details"
    if toast:
        gr.Warning(f"{action}: {text}")
    return f'<span class="medmoe-error">Could not {action}:</span> {text}'


def _answers(work, requests: list) -> list:
    """``work(requests)``, or the exception it raised as every request's answer."""
    try:
        return work(requests)
    except Exception as err:  # noqa: BLE001 - every failure becomes a message in the page
        return [err] * len(requests)


def _batch_outputs(work, requests: list, action: str, cleared: tuple, outputs) -> tuple[list, ...]:
    """The tab's outputs for a batch, one list per output: ``outputs(request, answer)`` per request of
    ``work(requests)``, or for a failed request the ``cleared`` outputs and the message saying why."""
    rows = [(*cleared, failure(action, answer, toast=False)) if isinstance(answer, Exception)
            else outputs(request, answer) for request, answer in zip(requests, _answers(work, requests))]
    return tuple([row[i] for row in rows] for i in range(len(cleared) + 1))


def _upload_name(upload) -> str:
    return os.path.basename(getattr(upload, "name", upload))


def _gallery(services: Services, prefix: str, pictures: Sequence[tuple]) -> list[tuple[str, str]]:
    """``(file, caption)`` per picture (an array or encoded bytes), written into a new folder of this request."""
    with services.results.open(prefix) as folder:
        return [(str(write_picture(folder, f"{i:02d}", picture)), text) for i, (picture, text) in enumerate(pictures)]


# ---------------------------------------------------------------------------------------------- handlers
def _search_handler(services: Services):
    """Batched: lists of queries and k in, lists of galleries, tables and messages out."""

    def outputs(request: tuple, answer):
        query = " ".join(str(request[0]).split())
        return _gallery(services, "search", answer.thumbnails), answer.rows, answer.message(query)

    def run(queries: list, ks: list):
        return _batch_outputs(services.search_many, list(zip(queries, ks)), "search", ([], []), outputs)

    return run


def _classify_handler(services: Services):
    """Batched: lists of uploads, class lists and texts in; lists of each output out."""

    def outputs(request: tuple, answer):
        attention = _gallery(services, "classify", answer.attention)
        message = answer.message(_upload_name(request[0]))
        return answer.probabilities, answer.expert_probabilities, attention, message

    def run(uploads: list, classes: list, texts: list):
        requests = list(zip(uploads, classes, texts))
        return _batch_outputs(services.classify_many, requests, "classify the image", (None, None, []),
                              outputs)

    return run


def _segment_handler(services: Services):
    def run(upload, selected, free_text, fast):
        try:
            view = services.segment(upload, selected, free_text, fast)
            z = view.best_slice()
            picture = _slice_file(services, view, z)
        except Exception as err:  # noqa: BLE001
            return (None, None, gr.Slider(visible=False), "", None, failure("segment the CT", err))
        slider = gr.Slider(minimum=0, maximum=view.depth - 1, value=z, step=1, visible=True,
                           label=f"axial slice (0 = inferior, {view.depth - 1} = superior)")
        return (services.views.keep(view), picture, slider, view.legend_html(),
                [str(view.mask_file), str(view.summary_file)], view.message(_upload_name(upload)))

    return run


def _slice_file(services: Services, view, z) -> str:
    with services.results.open("slice") as folder:
        return str(write_picture(folder, f"slice-{int(z):04d}", view.render(int(z)), "png"))


def _slice_handler(services: Services):
    def run(key, z):
        view = services.views.get(key)
        if view is None:  # nothing segmented yet, or the viewer's CT was let go
            if key is not None:
                gr.Warning("this segmentation is no longer kept for the viewer; segment the CT again")
            return None
        try:
            return _slice_file(services, view, z)
        except Exception as err:  # noqa: BLE001
            failure("draw the slice", err)
            return None

    return run


def _api(name: str | None) -> dict:
    """Event arguments that name an API endpoint, or (``None``) keep the event out of the API."""
    if name is not None:
        return {"api_name": name}
    if "api_visibility" in _parameters(gr.on):
        return {"api_visibility": "private"}
    return {"api_name": False, "show_api": False}  # Gradio 5


# ---------------------------------------------------------------------------------------------- tabs
@contextmanager
def _tab(title: str, key: str, intro: str) -> Iterator[None]:
    """A tab of the page (``id`` ``key``, element ``tab-<key>``) that opens with its ``intro`` text."""
    with gr.Tab(title, id=key, elem_id=f"tab-{key}"):
        gr.Markdown(intro)
        yield


def _search_tab(services: Services, batch_size: int) -> None:
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
        gr.on([button.click, query.submit], _search_handler(services), [query, k], [gallery, table, status],
              concurrency_id="model", batch=True, max_batch_size=batch_size, **_api("search"))


def _classify_tab(services: Services, batch_size: int) -> None:
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
                     concurrency_id="model", batch=True, max_batch_size=batch_size, **_api("classify"))


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
                view = gr.State(time_to_live=3600)  # a key of services.views: the page keeps the CTs, bounded
                picture = gr.Image(label="overlay", type="numpy", interactive=False, elem_id="segment-overlay")
                slider = gr.Slider(0, 1, value=0, step=1, label="axial slice", visible=False,
                                   elem_id="segment-slice")
                legend = gr.HTML(elem_id="segment-legend")
        button.click(_segment_handler(services), [upload, chosen, extra, fast],
                     [view, picture, slider, legend, files, status], concurrency_id="seg", **_api("segment"))
        slider.change(_slice_handler(services), [view, slider], picture, show_progress="hidden",
                      concurrency_limit=4, **_api(None))


def build_app(services: Services, *, batch_size: int = DEFAULT_BATCH) -> gr.Blocks:
    """The page: a header naming what is loaded, then the tabs the services support.

    Args:
        batch_size: most Search or Classify requests answered together (1: one at a time).
    """
    style = {} if "css" in _parameters(gr.Blocks.launch) else {"css": CSS}  # Gradio 5 styles the Blocks, 6 the launch
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600), **style) as app:
        loaded = [what for what, ok in (("search", services.can_search), ("classification", services.can_classify),
                                        ("segmentation", services.can_segment)) if ok]
        gr.Markdown(f"## medmoe\n{', '.join(loaded).capitalize()} on `{services.device}`. Uploads stay on this "
                    "machine.", elem_id="header")
        with gr.Tabs():
            if services.can_search:
                _search_tab(services, batch_size)
            if services.can_classify:
                _classify_tab(services, batch_size)
            if services.can_segment:
                _segment_tab(services)
    return app


def launch(services: Services, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           auth: Sequence[tuple[str, str]] | None = None, ssl_certfile: str | None = None,
           ssl_keyfile: str | None = None, batch_size: int = DEFAULT_BATCH):
    """Build the page and serve it on ``host:port`` (one job at a time per model, Search and Classify batched).

    Args:
        auth: ``(user, password)`` pairs; with them every page, file and API route asks for a login.
        ssl_certfile, ssl_keyfile: serve HTTPS with this certificate (PEM) and its key.
        batch_size: see :func:`build_app`.

    Returns:
        the running ``gr.Blocks`` when ``block`` is False (its ``local_url``; ``close()`` stops it).
    """
    app = build_app(services, batch_size=batch_size)
    app.queue(default_concurrency_limit=1)
    optional = {"css": CSS, "footer_links": [], "ssr_mode": False,  # not every supported Gradio has each
                "state_session_capacity": MAX_SESSIONS}
    accepted = _parameters(gr.Blocks.launch)
    security = {}
    if auth:
        security.update(auth=[tuple(pair) for pair in auth], auth_message="medmoe: log in to use this page")
    if ssl_certfile:
        # ssl_verify only concerns Gradio's own start-up request to 127.0.0.1, which a certificate for the
        # machine's name (or a self-signed one) cannot pass; browsers and clients still check the certificate.
        security.update(ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, ssl_verify=False)
    app.launch(server_name=host, server_port=port, max_file_size=services.limits.max_bytes,
               allowed_paths=[str(services.workdir)], show_error=False, inbrowser=False,
               prevent_thread_lock=not block, quiet=False, **security,
               **{k: v for k, v in optional.items() if k in accepted})
    return app


def _parameters(function) -> set[str]:
    import inspect

    return set(inspect.signature(function).parameters)
