"""The field loop in a real browser: a dataset built from the page, an inbox frame filed with
a key press, a retrain followed live, a photo labelled by the new version, then a rollback.

Real uvicorn serving the real model, a real Celery worker (embedded SQLite broker),
Debian's Chromium. Any console error, page error or request to another host fails it, and
so does a page that does not fit a desktop's or a phone's screen (``tests/browser/layout.py``).
"""

from pathlib import Path
from typing import Any, Iterator, List, Tuple

import httpx
import pytest

from tests.app.conftest import ServerThread, copy_model, settings_for
from tests.browser.conftest import Watch, screenshot
from tests.browser.layout import assert_fits
from tests.waiting import wait_until
from tests.worker import helpers

pytestmark = pytest.mark.browser

PER_CLASS = 8
TIMEOUT_MS = 30000
LABELS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")  # five: a matrix as wide as real ones
DESKTOP = {"width": 1280, "height": 900}
TABLET = {"width": 768, "height": 1024}  # checked, not photographed
PHONE = {"width": 360, "height": 780}  # the narrowest phone the console supports
ROSE = 66  # roses/ index of a photo that is a rose (index 50 there is a tulip: the set has strays)


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, trained: Any, backbone_dir: Path
) -> Iterator[Tuple[ServerThread, httpx.Client]]:
    """The API (every /label frame kept for review) and a worker, on one POETS_HOME.

    POETS_DEFAULT_MODEL is left at "default", which names no model: the only one, "flowers",
    serves an unnamed /label, and the console must say so."""
    home = tmp_path_factory.mktemp("console-home")
    settings = settings_for(home, backbone_dir, collect_threshold=1.01)
    copy_model(trained, settings.store_dir, "flowers")
    worker = helpers.start_worker(helpers.service_env(home, backbone_dir), home / "worker.log")
    server = ServerThread(settings).start()
    try:
        with server.client() as client:
            yield server, client
    finally:
        server.stop()
        helpers.stop(worker)


@pytest.fixture
def page(browser: Any, service: Tuple[ServerThread, httpx.Client]) -> Iterator[Tuple[Any, Watch]]:
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    watch = Watch(opened, service[0].url)
    opened.on("dialog", lambda dialog: dialog.accept())
    try:
        yield opened, watch
    finally:
        context.close()


def photos(flowers_dir: Path, label: str, count: int, skip: int = 0) -> List[str]:
    return [str(p) for p in sorted((flowers_dir / label).glob("*.jpg"))[skip : skip + count]]


def classes(client: httpx.Client, dataset: str) -> Any:
    response = client.get("/datasets/{}".format(dataset))
    assert response.status_code == 200, response.text
    return response.json()["classes"]


def fits(tab: Any, name: str, tallest: int = 0) -> None:
    """The page as it stands, at a desktop's width, a tablet's and a phone's: it fits the
    screen (see ``assert_fits``), and docs/console-NAME.png and console-NAME-phone.png show it."""
    for size, suffix in ((DESKTOP, ""), (TABLET, None), (PHONE, "-phone")):
        tab.set_viewport_size(size)
        assert_fits(tab, name)
        if suffix is not None:
            screenshot(tab, name + suffix, full_page=True, tallest=tallest)
    tab.set_viewport_size(DESKTOP)


def finished(client: httpx.Client) -> Any:
    job = client.get("/jobs").json()["jobs"][0]
    return job if job["state"] in helpers.FINISHED else None


def test_the_field_loop_from_the_browser(
    page: Tuple[Any, Watch], flowers_dir: Path, service: Tuple[ServerThread, httpx.Client]
) -> None:
    tab, watch = page
    server, client = service
    url = server.url

    # Datasets: create one, upload five classes from the page, move and delete a photo.
    tab.goto(url + "/console/datasets")
    tab.fill("#new-name", "yard")
    tab.click("#create-form button")
    tab.wait_for_selector("#dataset-title:text('yard')")
    for label in LABELS:
        tab.fill("#upload-label", label)
        tab.set_input_files("#upload-files", photos(flowers_dir, label, PER_CLASS + 1))
        tab.click("#upload-form button")
        tab.wait_for_selector("section.class[data-class='{}'] .thumb >> nth={}".format(label, PER_CLASS))
    everything = {label: PER_CLASS + 1 for label in LABELS}
    assert classes(client, "yard") == everything
    tab.click("section.class[data-class='daisy'] .thumb >> nth=0")
    tab.select_option("#move-to", "roses")
    tab.click("#move")
    moved = dict(everything, daisy=PER_CLASS, roses=PER_CLASS + 2)
    wait_until(lambda: classes(client, "yard") == moved, 10, "the move")
    tab.wait_for_selector("section.class[data-class='roses'] .thumb >> nth={}".format(PER_CLASS + 1))
    for index in (0, 1):
        tab.click("section.class[data-class='roses'] .thumb >> nth={}".format(index))
    tab.click("#delete")
    deleted = dict(everything, daisy=PER_CLASS, roses=PER_CLASS)
    wait_until(lambda: classes(client, "yard") == deleted, 10, "the deletion")
    tab.wait_for_selector("#selected-count:text('Click photos')")
    fits(tab, "datasets", tallest=900)

    # Review: frames kept by /label?collect=true; key 1 files one under daisy, key 0 drops one.
    for path in photos(flowers_dir, "daisy", 2, skip=40) + photos(flowers_dir, "tulips", 1):
        with open(path, "rb") as image:
            answer = client.post(
                "/label?collect=true", content=image.read(), headers={"Content-Type": "image/jpeg"}
            )
        assert answer.status_code == 200, answer.text
    wait_until(lambda: client.get("/review").json()["total"] == 3, 20, "three frames in the inbox")
    tab.goto(url + "/console/review?dataset=yard")
    tab.wait_for_selector("#guess:text('The model says')")
    tab.wait_for_selector(".keys button[data-key='1']:text('daisy')")
    assert "Invalid Date" not in tab.inner_text("main")  # when the frame came in, readable
    fits(tab, "review")
    first = client.get("/review").json()["items"][0]["id"]
    tab.keyboard.press("1")
    tab.wait_for_selector("#inbox-count:text('2 frames waiting')")
    assert classes(client, "yard")["daisy"] == PER_CLASS + 1
    tab.keyboard.press("0")
    tab.wait_for_selector("#inbox-count:text('1 frame waiting')")
    remaining = [item["id"] for item in client.get("/review").json()["items"]]
    assert len(remaining) == 1 and first not in remaining
    assert classes(client, "yard") == dict(deleted, daisy=PER_CLASS + 1)

    # Jobs: retrain on the dataset; live curves, then the matrix and the new version.
    tab.goto(url + "/console/jobs?dataset=yard")
    tab.wait_for_selector("input[name='how_many_training_steps']")
    tab.fill("input[name='how_many_training_steps']", "120")
    tab.fill("#model-name", "flowers")
    tab.click("#start")
    tab.wait_for_selector("#job-state .badge")
    job = wait_until(lambda: finished(client), 180, "the retrain job to end")
    assert job["state"] == "succeeded" and job["version"] == 2, job
    tab.wait_for_selector("#job-state .badge:text('succeeded')")
    # A flat curve has an empty bounding box, which Playwright calls invisible: attached is enough.
    tab.wait_for_selector("#charts polyline[data-series='validation']", state="attached")
    tab.wait_for_selector("table.confusion")
    assert tab.locator("#charts svg").count() == 2
    assert "N=" in tab.inner_text("#test-accuracy") and "95% CI" in tab.inner_text("#test-accuracy")
    tab.wait_for_selector("table.per-class")  # precision and recall beside the matrix
    history = job["progress"]["history"]
    assert [point["step"] for point in history][-1] == 120
    assert tab.locator("table.confusion tbody tr").count() == len(LABELS)
    fits(tab, "jobs")

    # Label: the new version answers, for a dropped file and a camera snapshot.
    wait_until(
        lambda: client.get("/models").json()["models"][0]["loaded_version"] == 2, 30, "version 2 loaded"
    )
    tab.goto(url + "/")
    # The unnamed choice names the model that answers it, not the setting that names none.
    tab.wait_for_selector("#model option:text('flowers (default)')", state="attached")
    assert tab.eval_on_selector("#model", "s => s.options[s.selectedIndex].text") == "flowers (default)"
    tab.set_input_files("#files", photos(flowers_dir, "roses", 1, skip=ROSE))
    tab.wait_for_selector("#results .result .bar")
    assert "flowers v2" in tab.inner_text("#results .result")
    assert tab.inner_text("#results .bar .bar-label >> nth=0") == "roses"
    tab.click("#camera-start")
    # A function, not an expression: Playwright evals expressions, which the CSP forbids.
    tab.wait_for_function("() => document.getElementById('video').videoWidth > 0")
    tab.click("#snapshot")
    tab.wait_for_selector("#camera-result .bar")
    fits(tab, "label")

    # Models: both versions side by side, then roll back to version 1.
    tab.goto(url + "/console/models")
    tab.wait_for_selector("#compare [data-compare='2']")
    tab.wait_for_selector("#compare [data-compare='1']")
    tab.wait_for_selector("tr[data-version='2'] .badge:text('current')")
    # The gate's decision on the newest version, and what the cameras (this test) sent it.
    tab.wait_for_selector("#promotion-card:not([hidden]) .badge")
    tab.wait_for_selector("#drift-card:not([hidden]) svg.chart")
    # A retrain policy, set from the form, shown with why it is not due yet.
    tab.select_option("#policy-dataset", "yard")
    tab.fill("#policy-after", "50")
    tab.click("#policy-save")
    tab.wait_for_selector("#policy-state:text('Waiting for')")
    assert client.get("/models/flowers/policy").json()["after_new_images"] == 50
    fits(tab, "models")
    tab.click("#policy-remove")
    tab.wait_for_selector("#policy-state:text('No policy')")
    assert client.get("/models/flowers/policy").status_code == 404
    tab.click("#rollback")
    tab.wait_for_selector("tr[data-version='1'] .badge:text('current')")
    assert client.get("/models/flowers/versions").json()["current_version"] == 1
    # Pin version 1 (the rolled-back one), then let go of it again.
    tab.click("tr[data-version='1'] button[data-action='pin']")
    tab.wait_for_selector("tr[data-version='1'] .badge:text('pinned')")
    assert client.get("/models/flowers/versions").json()["pinned_version"] == 1
    tab.click("tr[data-version='1'] button[data-action='unpin']")
    tab.wait_for_selector("#pin-state:text('Not pinned')")
    assert client.get("/models/flowers/versions").json()["pinned_version"] is None
    watch.check()


def test_every_page_fits_with_the_api_key_form(
    browser: Any, tmp_path_factory: pytest.TempPathFactory, trained: Any, backbone_dir: Path
) -> None:
    """With POETS_API_KEYS set the header carries the key form too: still no overlap and no
    sideways scrolling, on a desktop and on a phone (empty pages: no worker needed)."""
    home = tmp_path_factory.mktemp("console-keys-home")
    settings = settings_for(home, backbone_dir, api_keys=("console-key",))
    copy_model(trained, settings.store_dir, "flowers")
    server = ServerThread(settings).start()
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        tab = context.new_page()
        watch = Watch(tab, server.url)
        for path in ("/", "/console/datasets", "/console/review", "/console/jobs", "/console/models"):
            tab.goto(server.url + path)
            tab.wait_for_selector("#key-form input")
            tab.wait_for_load_state("networkidle")
            for size in (DESKTOP, TABLET, PHONE):
                tab.set_viewport_size(size)
                assert_fits(tab, path + " with the key form")
            tab.set_viewport_size(DESKTOP)
        watch.check()
    finally:
        context.close()
        server.stop()
