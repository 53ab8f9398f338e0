"""`medmoe serve` as a server: the named API called with gradio_client, the login enforced on every route,
HTTPS, concurrent identical requests each answered whole, batched answers equal to one-at-a-time ones, result
folders, and the command's access rules."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from testkit.serve import always_finding_seg_model, phantom_nifti, tiny_align_model, write_gallery

from medmoe.cli.main import main
from medmoe.errors import InvalidInputError
from medmoe.serve.access import AUTH_ENV, check_exposure, check_tls, is_loopback, logins, parse_logins
from medmoe.serve.results import ResultFolders, decode_picture
from medmoe.serve.services import Services

pytestmark = pytest.mark.timeout(300)

LOGIN = ("radiology", "correct horse: battery staple")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(path: Path, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((70, 90)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    from medmoe.align.index import SearchIndex, build_index

    model = tiny_align_model()
    gallery = write_gallery(tmp_path_factory.mktemp("gallery"))
    folder = build_index(model, gallery, tmp_path_factory.mktemp("index") / "idx", progress=False)
    services = Services(model, always_finding_seg_model(), SearchIndex.load(folder),
                        workdir=tmp_path_factory.mktemp("work"))
    yield services
    services.close()


def serve(services: Services, **options) -> tuple[object, str]:
    """The page on a free loopback port (in this process); returns (Blocks, URL)."""
    from medmoe.serve.app import launch

    app = launch(services, host="127.0.0.1", port=free_port(), block=False, **options)
    return app, app.local_url


@pytest.fixture(scope="module")
def server(services):
    app, url = serve(services, auth=[LOGIN])
    yield url
    app.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, auth=LOGIN, verbose=False)


# ---------------------------------------------------------------------------------------------- the API
def test_the_api_names_its_endpoints_after_the_tabs(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/search", "/classify", "/segment"}
    assert not api["unnamed_endpoints"]  # the slice viewer stays out of the API
    labels = [p["label"] for p in api["named_endpoints"]["/classify"]["parameters"]]
    assert labels == ["image (PNG, JPEG, DICOM)", "classes (comma-separated)",
                      "report or prompt for the attention map (optional)"]


def test_search_classify_and_segment_by_name(client, tmp_path):
    from gradio_client import handle_file

    gallery, table, message = client.predict("pleural effusion", 3, api_name="/search")
    assert message == "3 image(s) for \u201cpleural effusion\u201d" and len(table["data"]) == 3
    assert all(decode_picture(Path(item["image"]).read_bytes()).std() > 5 for item in gallery)
    label, experts, attention, message = client.predict(handle_file(png(tmp_path / "chest.png")), "xray, ct", "",
                                                        api_name="/classify")
    assert {c["label"] for c in label["confidences"]} == {"xray", "ct"} and "routed to" in message
    assert len(attention) >= 3 and "chest.png" in message
    picture, _, legend, files, message = client.predict(handle_file(phantom_nifti(tmp_path / "ct.nii.gz")),
                                                        ["liver"], "spleen", False, api_name="/segment")
    assert "2 of 2 class(es) found" in message and "liver" in legend and "spleen" in legend
    assert Image.open(picture).size[0] == 512 and [Path(f).name for f in files] == ["ct_mask.nii.gz",
                                                                                      "ct_summary.json"]


def test_a_bad_upload_through_the_api_gets_the_tabs_message(client, tmp_path):
    from gradio_client import handle_file

    (tmp_path / "notes.txt").write_text("not an image")
    label, _, attention, message = client.predict(handle_file(tmp_path / "notes.txt"), "xray, ct", "",
                                                  api_name="/classify")
    assert not label and attention == [] and "Could not classify the image" in message
    assert "notes.txt: unsupported file type" in message


@pytest.mark.slow  # about 20 s on 2 cores
def test_concurrent_identical_requests_are_each_answered_whole(server, tmp_path):
    """8 clients send the same image at once. Each request writes its own answer files, so none is rewritten
    while another request sends it (a shared file could reach a client as 0 bytes or as a body longer than its
    Content-Length); every file of every answer must come back and decode to the same picture as the others'."""
    from gradio_client import Client, handle_file

    image = png(tmp_path / "same.png")
    answers: list[tuple[str, object]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def user(number: int) -> None:
        try:
            client = Client(server, auth=LOGIN, verbose=False)
            start.wait()
            for _ in range(3):
                answers.append(("search", client.predict("chest x-ray", 8, api_name="/search")))
                answers.append(("classify", client.predict(handle_file(image), "xray, ct", "x-ray of the chest",
                                                           api_name="/classify")))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=user, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors[:3]
    assert len(answers) == 48
    first: dict[str, list[np.ndarray]] = {}
    for kind, answer in answers:
        files = [item["image"] for item in (answer[0] if kind == "search" else answer[2])]
        assert len(files) == (8 if kind == "search" else 4), answer[-1]  # the image, the mean, x-ray, chest
        pictures = [decode_picture(Path(f).read_bytes()) for f in files]  # a cut file does not decode
        expected = first.setdefault(kind, pictures)
        assert [p.shape for p in pictures] == [p.shape for p in expected]
        # thumbnails are the same bytes every time; attention maps computed in batches of different
        # compositions may differ in their last bits, hence a JPEG that differs by a few levels
        tolerance = 0 if kind == "search" else 8
        assert all(np.abs(p.astype(int) - e.astype(int)).max() <= tolerance for p, e in zip(pictures, expected))


# ---------------------------------------------------------------------------------------------- the login
@pytest.mark.parametrize("method, route", [
    ("GET", "config"), ("GET", "gradio_api/info"), ("POST", "gradio_api/call/search"),
    ("POST", "gradio_api/upload"), ("POST", "gradio_api/queue/join"), ("GET", "gradio_api/file=/etc/passwd"),
])
def test_every_route_refuses_a_request_without_the_login(server, method, route):
    response = httpx.request(method, server + route, json={"data": ["x", 3]} if method == "POST" else None)
    assert response.status_code in (401, 403), (route, response.status_code, response.text[:200])


def test_a_wrong_password_is_refused_and_the_right_one_lets_the_api_in(server):
    from gradio_client import Client

    assert httpx.post(server + "login", data={"username": LOGIN[0], "password": "guess"}).status_code == 400
    with pytest.raises(Exception, match="Could not login"):
        Client(server, auth=(LOGIN[0], "guess"), verbose=False)
    with httpx.Client(base_url=server) as browser:
        assert browser.post("login", data={"username": LOGIN[0], "password": LOGIN[1]}).status_code == 200
        assert browser.get("config").status_code == 200
        for outside in ("/etc/passwd", __file__):  # logged in, still nothing outside the page's folders
            assert browser.get(f"gradio_api/file={outside}").status_code in (403, 404)


def test_https_with_a_certificate_and_its_key(services, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    app, url = serve(services, auth=[LOGIN], ssl_certfile=str(cert), ssl_keyfile=str(key))
    try:
        assert url.startswith("https://")
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(cert))) as browser:
            assert browser.get("config").status_code == 401
            assert browser.post("login", data={"username": LOGIN[0], "password": LOGIN[1]}).status_code == 200
            assert browser.get("config").status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "config", timeout=5)
    finally:
        app.close()


# ---------------------------------------------------------------------------------------------- batches and folders
def test_a_batch_of_classifications_answers_as_one_at_a_time(services, tmp_path):
    images = [str(png(tmp_path / f"{i}.png", seed=i)) for i in range(3)]
    requests = [(images[0], "xray, ct", ""), (images[1], "mri, pathology, fundus", "Chest x-ray: effusion."),
                (images[2], "xray, ct", "")]
    together = services.classify_many(requests)
    for request, batched in zip(requests, together):
        alone = services.classify(*request)
        assert batched.probabilities.keys() == alone.probabilities.keys()
        assert np.allclose(list(batched.probabilities.values()), list(alone.probabilities.values()), atol=1e-4)
        assert batched.expert == alone.expert and batched.text == alone.text
        for (a, caption_a), (b, caption_b) in zip(batched.attention, alone.attention):
            assert caption_a == caption_b and np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_attention_from_the_classifiers_features_matches_attention_maps(services, tmp_path):
    from medmoe.align.figures import attention_maps
    from medmoe.serve.classify import prepare_image, word_maps

    model = services.model
    image, _, _ = prepare_image(png(tmp_path / "a.png"), services.classifier.image_size)
    text = "Chest x-ray: small pleural effusion at the right base."
    with torch.no_grad():
        expected, words = attention_maps(model, image, [text])
        features = model.image_features(image)
        found = word_maps(model, features["local_features"], services.classifier.words.get([text]),
                          tuple(image.shape[-2:]))[0]
    assert services.classifier.words.get([text])[0][1] == words[0]
    assert torch.allclose(found, expected[0, :len(words[0])], atol=1e-5)


def test_a_batch_of_searches_answers_as_one_at_a_time(services):
    together = services.search_many([("pleural effusion", 3), ("", 3), ("ct abdomen nodule", 5)])
    assert isinstance(together[1], InvalidInputError)
    for (query, k), batched in zip([("pleural effusion", 3), ("ct abdomen nodule", 5)], [together[0], together[2]]):
        alone = services.search(query, k)
        assert [row[2] for row in batched.rows] == [row[2] for row in alone.rows]
        assert np.allclose([row[1] for row in batched.rows], [row[1] for row in alone.rows], atol=2e-3)


def test_identical_requests_write_their_files_in_folders_of_their_own(services):
    from medmoe.serve import app

    galleries, _, _ = app._search_handler(services)(["chest x-ray", "chest x-ray"], [4, 4])
    first, second = ([Path(path) for path, _ in gallery] for gallery in galleries)
    assert first[0].parent != second[0].parent and len({p.parent for p in first}) == 1
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_result_folders_are_removed_once_their_request_is_long_finished(tmp_path):
    folders = ResultFolders(tmp_path / "results", grace_s=60)
    with folders.open("search") as a, folders.open("search") as b:
        assert a != b and a.is_dir() and b.is_dir()
        (a / "00.jpg").write_bytes(b"x")
    assert folders.prune(now=time.monotonic() + 30) == 0 and a.exists()
    assert folders.prune(now=time.monotonic() + 61) == 2 and not a.exists() and not b.exists()
    folders.close()
    assert not (tmp_path / "results").exists()


def test_the_viewer_keeps_the_last_segmentations_only(services, tmp_path, monkeypatch):
    from medmoe.serve import app

    monkeypatch.setattr(services.views, "size", 2)
    ct = str(phantom_nifti(tmp_path / "ct.nii.gz"))
    keys = [app._segment_handler(services)(ct, ["liver"], "", False)[0] for _ in range(3)]
    assert len(set(keys)) == 3 and all(isinstance(k, str) for k in keys)
    draw = app._slice_handler(services)
    with pytest.warns(UserWarning, match="no longer kept for the viewer"):
        assert draw(keys[0], 3) is None  # let go: the CT of only the last two stays in memory
    assert Image.open(draw(keys[2], 3)).size[0] == 512


def test_api_calls_without_a_session_do_not_pile_up_session_states(services, monkeypatch):
    """Each `/gradio_api/call/...` request starts a session whose state Gradio keeps (about 90 KB each, 10,000
    by default): a 10-minute soak at 16 clients grew the server by 420 MB. The page keeps MAX_SESSIONS."""
    from medmoe.serve import app as page

    monkeypatch.setattr(page, "MAX_SESSIONS", 5)
    app, url = serve(services)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(12):
                event = http.post("gradio_api/call/search", json={"data": [f"chest x-ray {i}", 2]}).json()
                answer = http.get(f"gradio_api/call/search/{event['event_id']}").text
                assert "event: complete" in answer and "2 image(s)" in answer
        assert len(app.state_holder.session_data) == 5
    finally:
        app.close()


# ---------------------------------------------------------------------------------------------- access rules
def test_logins_come_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "logins.txt"
    path.write_text("# the radiology team\n\nalice: pass:word with spaces\n bob :s3cret\n")
    os.chmod(path, 0o600)
    assert logins(path, environ={}) == [("alice", " pass:word with spaces"), ("bob", "s3cret")]
    assert logins(None, environ={AUTH_ENV: "carol:pw"}) == [("carol", "pw")]
    assert logins(path, environ={AUTH_ENV: "carol:pw"})[0][0] == "alice"  # the file wins
    assert logins(None, environ={}) is None
    for bad, message in [("alice\n", "line 1: expected user:password"), (":pw", "line 1"), ("alice:", "line 1"),
                         ("a:1\na:2", "line 2: user 'a' is given twice"), ("# only a comment", "no user:password")]:
        with pytest.raises(InvalidInputError, match=message) as error:
            parse_logins(bad, "--auth-file x")
        assert "pw" not in str(error.value) or "user:password" in str(error.value)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.20", False), ("myhost.example", False)])
def test_only_loopback_addresses_count_as_this_machine(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_address_needs_a_login_or_the_explicit_flag():
    check_exposure("127.0.0.1", None, False, tls=False)
    check_exposure("0.0.0.0", [LOGIN], False, tls=True)
    check_exposure("0.0.0.0", None, True, tls=False)
    with pytest.raises(InvalidInputError, match="--host 0.0.0.0: .* --no-auth-on-public-host"):
        check_exposure("0.0.0.0", None, False, tls=False)
    with pytest.raises(InvalidInputError, match="go together"):
        check_tls("cert.pem", None)


def test_the_command_refuses_a_public_host_without_a_login_in_one_line(services, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    seg_dir = services.seg_model.save_pretrained(tmp_path / "mome")
    start = time.perf_counter()
    assert main(["serve", "--seg-model", str(seg_dir), "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 5  # refused before any model loads
    assert err.count("\n") == 1 and err.startswith("medmoe: error: --host 0.0.0.0: the page shows patient images")
    assert main(["serve", "--seg-model", str(seg_dir), "--auth-file", str(tmp_path / "missing.txt")]) == 1
    assert "--auth-file" in capsys.readouterr().err
    assert main(["serve", "--seg-model", str(seg_dir), "--ssl-keyfile", str(tmp_path / "k.pem")]) == 1
    assert "go together" in capsys.readouterr().err
