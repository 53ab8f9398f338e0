"""`medmoe serve` in a real browser: the command is started on a free local port with a tiny MedMoE, a small
index built with ``build_index``, a MoME model and a login (``MEDMOE_SERVE_AUTH``), and headless Debian
Chromium (selenium + chromedriver) logs in, searches, uploads an image, uploads a CT, moves the slice slider,
downloads the mask, and uploads bad files; requests without the login are refused.

Screenshots of each tab go to ``$MEDMOE_SCREENSHOTS`` (``serve-search.png``, ``serve-classify.png``,
``serve-segment.png``, ``serve-error.png``; e.g. ``MEDMOE_SCREENSHOTS=docs/images``), else to the test's
temporary folder. For README screenshots with trained models, point ``MEDMOE_SERVE_MODEL``,
``MEDMOE_SERVE_SEG_MODEL`` and ``MEDMOE_SERVE_MANIFEST`` (the gallery to index) at them, and optionally
``MEDMOE_SERVE_IMAGE`` / ``MEDMOE_SERVE_CT`` / ``MEDMOE_SERVE_QUERY`` (docs/serve.md).

The browser is never optional: without ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (or
``$MEDMOE_CHROMIUM`` / ``$MEDMOE_CHROMEDRIVER``) the test fails and says that ``make test`` installs them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from testkit.serve import (
    FOV_MM,
    always_finding_seg_model,
    corrupt_png,
    phantom_nifti,
    tiny_align_model,
    write_gallery,
)

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]  # slow: `make test-fast` leaves it out, CI runs it

CHROMIUM = os.environ.get("MEDMOE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MEDMOE_CHROMEDRIVER", "/usr/bin/chromedriver")
STARTUP_S = 180
ACTION_S = 150
LOGIN = ("radiologist", "not-in-the-shell-history")


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(f"the browser test needs Debian's chromium and chromium-driver, missing: {', '.join(missing)}. "
                    "`make test` installs them (apt-get install chromium chromium-driver); or set "
                    "MEDMOE_CHROMIUM / MEDMOE_CHROMEDRIVER", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MEDMOE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Models, index and uploads: tiny ones, or the trained ones the MEDMOE_SERVE_* variables name."""
    from medmoe.align.index import build_index
    from medmoe.saved_model import load_model

    root = tmp_path_factory.mktemp("serve-browser")
    if os.environ.get("MEDMOE_SERVE_MODEL"):
        model_dir = Path(os.environ["MEDMOE_SERVE_MODEL"])
        model = load_model(model_dir)
        manifest = Path(os.environ["MEDMOE_SERVE_MANIFEST"])
    else:
        model = tiny_align_model()
        model_dir = model.save_pretrained(root / "medmoe")
        manifest = write_gallery(root / "gallery")
    index = build_index(model, manifest, root / "index", progress=False)
    seg_dir = (Path(os.environ["MEDMOE_SERVE_SEG_MODEL"]) if os.environ.get("MEDMOE_SERVE_SEG_MODEL")
               else always_finding_seg_model().save_pretrained(root / "mome"))
    image = Path(os.environ.get("MEDMOE_SERVE_IMAGE") or sorted(manifest.parent.rglob("*.png"))[-1])
    ct = Path(os.environ.get("MEDMOE_SERVE_CT") or phantom_nifti(root / "abdomen.nii.gz"))
    # the server accepts CTs up to the test CT's size; the "too large" CT is a phantom with 1.5x more voxels
    max_voxels = int(np.prod(nib.load(ct).shape[:3]))
    fov_voxels = np.prod(FOV_MM)
    big_ct = phantom_nifti(root / "big_ct.nii.gz", spacing=float((fov_voxels / (1.5 * max_voxels)) ** (1 / 3)))
    assert np.prod(nib.load(big_ct).shape) > max_voxels
    return {"model": model_dir, "seg_model": seg_dir, "index": index, "image": image, "ct": ct,
            "max_ct_voxels": max_voxels, "big_ct": big_ct,
            "broken": corrupt_png(root / "broken.png"), "log": root / "server.log"}


@pytest.fixture(scope="module")
def server(files):
    """`medmoe serve` in a subprocess on a free port; yields its URL once the page answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "medmoe", "serve", "--model", str(files["model"]), "--seg-model",
           str(files["seg_model"]), "--index", str(files["index"]), "--port", str(port), "--device", "cpu",
           "--max-ct-voxels", str(files["max_ct_voxels"])]
    log = open(files["log"], "w")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           "MEDMOE_SERVE_AUTH": ":".join(LOGIN)}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"medmoe serve exited with {proc.returncode}:\n{files['log'].read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:  # the login page
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"medmoe serve did not answer within {STARTUP_S} s:\n{files['log'].read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(server):
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(STARTUP_S)
    try:
        driver.get(server)
        log_in(driver, *LOGIN)
        wait(driver, STARTUP_S).until(lambda d: d.find_elements("id", "tab-classify-button"))
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------------------------------- helpers
def log_in(driver, user: str, password: str) -> None:
    """Fill Gradio's login form and submit it."""
    wait(driver, STARTUP_S).until(lambda d: css(d, "input[type=password]"))
    css(driver, "input[type=text], textarea")[0].send_keys(user)
    css(driver, "input[type=password]")[0].send_keys(password)
    [b for b in css(driver, "button") if b.text.strip().lower() == "login"][0].click()


def with_cookies(driver, url: str) -> urllib.request.Request:
    """A request for ``url`` carrying the browser's session cookies (the login)."""
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
    return urllib.request.Request(url, headers={"Cookie": cookies})


def wait(driver, seconds: float = ACTION_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.25)


def css(driver, selector: str):
    return driver.find_elements("css selector", selector)


def open_tab(driver, name: str) -> None:
    from selenium.common.exceptions import ElementClickInterceptedException

    button = driver.find_element("id", f"tab-{name}-button")
    try:
        button.click()
    except ElementClickInterceptedException:  # a toast over the tab bar: click the tab itself, not the toast
        driver.execute_script("arguments[0].click();", button)
    wait(driver, 30).until(lambda d: d.find_element("id", f"tab-{name}").is_displayed())


def upload(driver, component: str, path: Path) -> None:
    """Put a file into a Gradio File component (clearing the previous one) and wait until it shows."""
    clear = css(driver, f"#{component} button[aria-label='Clear']")
    if clear:
        clear[0].click()
    wait(driver, 30).until(lambda d: css(d, f"#{component} input[type=file]"))
    css(driver, f"#{component} input[type=file]")[0].send_keys(str(path.resolve()))
    wait(driver, 60).until(lambda d: css(d, f"#{component} td.filename[aria-label='{path.name}']"))


def status(driver, tab: str) -> str:
    return driver.find_element("id", f"{tab}-status").text


def wait_for_status(driver, tab: str, text: str) -> str:
    wait(driver).until(lambda d: text in status(d, tab) or "Could not" in status(d, tab))
    return status(driver, tab)


def loaded_images(driver, selector: str) -> int:
    """How many images under ``selector`` the browser has actually decoded."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).filter(i => i.complete && i.naturalWidth > 0)"
        ".length;", selector)


def assert_no_error(driver, tab: str) -> None:
    text = status(driver, tab)
    assert "Could not" not in text and "internal error" not in text, text
    toasts = [t.text for t in css(driver, "[data-testid='toast-body']")]
    assert not [t for t in toasts if "error" in t.lower()], toasts


def dismiss_toasts(driver) -> None:
    for button in css(driver, "[data-testid='toast-close']"):
        try:
            button.click()
        except Exception:  # noqa: BLE001 - a toast that closed by itself meanwhile
            pass


def screenshot(driver, folder: Path, name: str) -> Path:
    driver.execute_script("window.scrollTo(0, 0);")
    time.sleep(0.4)  # let images finish painting
    path = folder / f"serve-{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000, f"could not save {path}"
    return path


# ---------------------------------------------------------------------------------------------- the tests
def test_a_text_search_shows_thumbnails(browser, shots):
    open_tab(browser, "search")
    query = css(browser, "#search-query textarea, #search-query input")[0]
    query.clear()
    query.send_keys(os.environ.get("MEDMOE_SERVE_QUERY", "pleural effusion"))
    browser.find_element("id", "search-button").click()
    text = wait_for_status(browser, "search", "image(s) for")
    assert_no_error(browser, "search")
    assert text.startswith("8 image(s)") or os.environ.get("MEDMOE_SERVE_MANIFEST"), text
    wait(browser, 30).until(lambda d: loaded_images(d, "#search-gallery img") >= 8)
    captions = [c.text for c in css(browser, "#search-gallery .caption-label")]
    assert captions[0].startswith("#1 ") and captions[1].startswith("#2 ")
    rank, score, report = captions[0].split(None, 2)
    table = browser.find_element("id", "search-table").text
    assert "score" in table and score in table and report[:20] in table, table[:500]
    screenshot(browser, shots, "search")


def test_an_image_upload_shows_a_classification(browser, shots, files):
    open_tab(browser, "classify")
    upload(browser, "classify-upload", files["image"])
    browser.find_element("id", "classify-button").click()
    text = wait_for_status(browser, "classify", "routed to")
    assert_no_error(browser, "classify")
    assert files["image"].name in text and "expert" in text
    label = browser.find_element("id", "classify-label").text
    assert all(name in label for name in ("xray", "ct", "mri", "ultrasound", "pathology", "fundus")), label
    assert "%" in label and "expert" in browser.find_element("id", "classify-experts").text
    wait(browser, 30).until(lambda d: loaded_images(d, "#classify-attention img") >= 3)
    screenshot(browser, shots, "classify")


def test_a_ct_upload_shows_an_overlay_across_slices_and_the_mask_to_download(browser, shots, files):
    open_tab(browser, "segment")
    upload(browser, "segment-upload", files["ct"])
    chosen = [box.find_element("xpath", "..").text
              for box in css(browser, "#segment-classes input[type=checkbox]") if box.is_selected()]
    assert chosen, "no class is ticked by default"
    extra = css(browser, "#segment-extra textarea, #segment-extra input")[0]
    extra.clear()
    extra.send_keys("liver")  # typed classes join the ticked ones (a repeat is segmented once)
    browser.find_element("id", "segment-button").click()
    text = wait_for_status(browser, "segment", "class(es) found")
    assert_no_error(browser, "segment")
    assert "axial slices" in text
    wait(browser, 30).until(lambda d: loaded_images(d, "#segment-overlay img") == 1)
    legend = browser.find_element("id", "segment-legend").text
    assert legend and all(name in legend for name in [*chosen, "liver"]), (legend, chosen)
    # the slider moves through the slices: another slice, another picture
    before = css(browser, "#segment-overlay img")[0].get_attribute("src")
    number = css(browser, "#segment-slice input[type=number]")[0]
    current = int(float(number.get_attribute("value")))
    number.clear()
    number.send_keys(str(current + 3 if current < 10 else current - 3), "\n")
    wait(browser, 60).until(lambda d: css(d, "#segment-overlay img")
                            and css(d, "#segment-overlay img")[0].get_attribute("src") != before)
    number.clear()
    number.send_keys(str(current), "\n")
    wait(browser, 60).until(lambda d: loaded_images(d, "#segment-overlay img") == 1)
    # the label map downloads as a gzipped NIfTI
    links = [a for a in css(browser, "#segment-download a[download]") if a.get_attribute("download").endswith(".nii.gz")]
    assert links, browser.find_element("id", "segment-download").text
    with urllib.request.urlopen(with_cookies(browser, links[0].get_attribute("href")), timeout=30) as response:
        assert response.read(2) == b"\x1f\x8b"
    with pytest.raises(urllib.error.HTTPError) as refused:  # the same file without the login
        urllib.request.urlopen(links[0].get_attribute("href"), timeout=30)
    assert refused.value.code in (401, 403)
    screenshot(browser, shots, "segment")


def test_bad_uploads_get_a_message_and_the_app_keeps_answering(browser, shots, files):
    open_tab(browser, "classify")
    upload(browser, "classify-upload", files["broken"])
    browser.find_element("id", "classify-button").click()
    text = wait_for_status(browser, "classify", "Could not")
    assert "Could not classify the image" in text and "broken.png" in text, text
    assert not css(browser, "#classify-attention img")  # the previous result is cleared
    screenshot(browser, shots, "error")
    dismiss_toasts(browser)

    open_tab(browser, "segment")
    upload(browser, "segment-upload", files["broken"])
    browser.find_element("id", "segment-button").click()
    text = wait_for_status(browser, "segment", "Could not")
    assert "not a CT volume" in text, text
    upload(browser, "segment-upload", files["big_ct"])
    browser.find_element("id", "segment-button").click()
    wait(browser).until(lambda d: "larger than this page segments" in status(d, "segment"))
    dismiss_toasts(browser)

    # the server still answers: a good upload works again
    open_tab(browser, "classify")
    upload(browser, "classify-upload", files["image"])
    browser.find_element("id", "classify-button").click()
    wait_for_status(browser, "classify", "routed to")
    assert_no_error(browser, "classify")


def test_the_page_and_its_api_need_the_login(server, browser):
    for route in ("config", "gradio_api/info", "gradio_api/file=/etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server + route, timeout=30)
        assert refused.value.code in (401, 403), route
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(server + "gradio_api/call/search", data=b'{"data": ["x", 3]}',
                                                      headers={"Content-Type": "application/json"}), timeout=30)
    assert refused.value.code in (401, 403)
    with urllib.request.urlopen(with_cookies(browser, server + "config"), timeout=30) as response:
        assert response.status == 200  # the browser's login lets it in
    # a wrong password leaves a fresh browser session at the login page
    browser.delete_all_cookies()
    browser.get(server)
    log_in(browser, LOGIN[0], "wrong")
    time.sleep(2)
    assert not browser.find_elements("id", "tab-classify-button") and css(browser, "input[type=password]")
    log_in(browser, *LOGIN)  # and the right one opens the page again
    wait(browser, STARTUP_S).until(lambda d: d.find_elements("id", "tab-classify-button"))


def test_the_browser_test_fails_without_a_browser(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match="`make test` installs them"):
        require_browser()

