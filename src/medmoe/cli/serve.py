"""`medmoe serve`: a local web page for search, zero-shot classification and CT segmentation (Gradio).

The handler imports Gradio and the models lazily (``medmoe --help`` stays fast).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from medmoe.cli.arguments import add_command

logger = logging.getLogger(__name__)

EPILOG = """\
examples:
  # classification (and search, with an index built by `medmoe align index`) and CT segmentation
  medmoe serve --model runs/align/model --index runs/align/index --seg-model runs/mome/model

  # segmentation only, on the first GPU, reachable from other machines: with a login and HTTPS
  printf 'radiology:%s\\n' "$(openssl rand -base64 18)" > logins.txt && chmod 600 logins.txt
  medmoe serve --seg-model runs/mome/model --device cuda --host 0.0.0.0 --port 8080 --auth-file logins.txt \\
      --ssl-certfile cert.pem --ssl-keyfile key.pem

  # the login from the environment instead of a file
  MEDMOE_SERVE_AUTH="radiology:$(cat secret)" medmoe serve --model runs/align/model --host 0.0.0.0

tabs: Search (--model and --index): text -> image search with thumbnails, scores and reports.
Classify (--model): zero-shot class probabilities of an uploaded PNG/JPEG/DICOM image, the router's expert,
word-region attention of a report or prompt. Segment (--seg-model): an uploaded NIfTI or zipped DICOM series,
prompted classes, an axial slice viewer with the masks, the label map to download.
Bad uploads (wrong type, corrupt, empty, too large) get a message in the page; the server keeps running.
API (gradio_client): /search, /classify, /segment; docs/serve.md has a Python example.
"""


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
        return value

    return parse


def default_threads() -> int:
    """Half the cores this process may use (at least 1): two model jobs may run at once, and threads beyond
    the cores stall PyTorch's parallel regions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medmoe serve``."""
    from medmoe.serve.uploads import DEFAULT_MAX_CT_VOXELS, DEFAULT_MAX_UPLOAD_MB

    DEFAULT_BATCH = 16  # medmoe.serve.app.DEFAULT_BATCH (not imported: it loads Gradio)

    parser = add_command(sub, "serve", run_serve, epilog=EPILOG)
    models = parser.add_argument_group("what to serve (at least one model)")
    models.add_argument("--model", default=None, metavar="DIR",
                        help="a saved MedMoE model directory (Search and Classify tabs)")
    models.add_argument("--seg-model", default=None, metavar="DIR",
                        help="a saved MoME segmentation model directory (Segment tab)")
    models.add_argument("--index", default=None, metavar="IDX",
                        help="an index folder written by `medmoe align index` with --model (Search tab)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only); any other address needs "
                             "a login (--auth-file or $MEDMOE_SERVE_AUTH) or --no-auth-on-public-host")
    server.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    server.add_argument("--device", default="auto", metavar="DEVICE",
                        help="where the models run: auto (CUDA if available, else CPU; default), cpu, cuda, cuda:N")
    server.add_argument("--threads", type=_positive(int), default=default_threads(), metavar="N",
                        help="CPU threads of each model job (default: half this machine's cores: the "
                             "Search/Classify and the Segment queues may run at once)")
    server.add_argument("--batch-size", type=_positive(int), default=DEFAULT_BATCH, metavar="N",
                        help=f"most Search or Classify requests answered together (default {DEFAULT_BATCH}; 1: one "
                             "at a time)")
    access = parser.add_argument_group("access")
    access.add_argument("--auth-file", default=None, metavar="PATH",
                        help="a file of user:password lines (chmod 600); the page then asks for a login. Without "
                             "it, $MEDMOE_SERVE_AUTH (user:password) is used when set. Never on the command line")
    access.add_argument("--no-auth-on-public-host", action="store_true",
                        help="serve a --host other than loopback without a login (anyone who reaches it can use "
                             "the page and see its images)")
    access.add_argument("--ssl-certfile", default=None, metavar="PEM", help="serve HTTPS with this certificate")
    access.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="the certificate's private key")
    limits = parser.add_argument_group("upload limits")
    limits.add_argument("--max-upload-mb", type=_positive(float), default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                        help=f"largest upload, and largest unpacked zip (default {DEFAULT_MAX_UPLOAD_MB})")
    limits.add_argument("--max-ct-voxels", type=_positive(int), default=DEFAULT_MAX_CT_VOXELS, metavar="N",
                        help=f"largest CT the Segment tab accepts, in voxels (default {DEFAULT_MAX_CT_VOXELS:,} = "
                             "512 x 512 x 1024)")


def run_serve(args: argparse.Namespace) -> int:
    """a local web page: text->image search, zero-shot classification, CT segmentation

    Start a local web page (Gradio) over a MedMoE model, its search index and a MoME model.
    """
    from medmoe.errors import InvalidInputError
    from medmoe.serve.uploads import UploadLimits

    if not 1 <= args.port <= 65535:
        raise InvalidInputError(f"--port {args.port}: expected 1 to 65535")
    from medmoe.serve.access import check_exposure, check_tls, logins

    check_tls(args.ssl_certfile, args.ssl_keyfile)
    users = logins(args.auth_file)
    check_exposure(args.host, users, args.no_auth_on_public_host, tls=bool(args.ssl_certfile))
    limits = UploadLimits(max_bytes=int(args.max_upload_mb * 1024 * 1024), max_ct_voxels=args.max_ct_voxels)
    # OpenMP threads that spin while waiting hold the cores other requests need (set before torch loads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    from medmoe.serve.services import load_services

    services = load_services(args.model, args.seg_model, args.index, device=args.device, limits=limits)
    from medmoe.serve.app import launch

    for noisy in ("httpx", "faiss.loader"):  # one line per request / library probe at the default level
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))

    import signal

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # `kill` stops it like Ctrl-C
    try:
        launch(services, host=args.host, port=args.port, auth=users, ssl_certfile=args.ssl_certfile,
               ssl_keyfile=args.ssl_keyfile, batch_size=args.batch_size)
    finally:
        signal.signal(signal.SIGTERM, previous)
        services.close()
    return 0
