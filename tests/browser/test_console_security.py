"""The console's hardening in a real browser (Debian's Chromium, real uvicorn, keys on).

* Every page (and /docs) comes with a CSP and works under it: any CSP violation is a console
  error, which fails the test.
* With keys on, thumbnails, dataset photos and inbox frames still show once the key is typed
  in (the console trades it for the HttpOnly image cookie), and do not show without it.
* Another site cannot frame the console, cannot make the browser post to it
  (``fetch(..., {mode: "no-cors"})`` with a multipart body), and cannot reach it through
  DNS rebinding (a name of the attacker's that resolves to this server).
"""

import http.server
import threading
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import httpx
import pytest

from app.console.routes import PAGES
from poets.engine.inbox import Inbox
from tests.app.conftest import ServerThread, settings_for
from tests.browser.conftest import ARGS, CHROMIUM, Watch
from tests.net import free_port

pytestmark = pytest.mark.browser

KEY = "browser-security-key"
TIMEOUT_MS = 30000
PHOTOS = 4


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, backbone_dir: Path, flowers_dir: Path
) -> Iterator[Tuple[ServerThread, httpx.Client]]:
    """Keys on; a dataset with photos and an inbox with frames (no model is needed to show them)."""
    home = tmp_path_factory.mktemp("console-security-home")
    server = ServerThread(settings_for(home, backbone_dir, api_keys=(KEY,))).start()
    photos = sorted((flowers_dir / "tulips").glob("*.jpg"))[:PHOTOS]
    inbox = Inbox(server.settings.inbox_dir, 10, 10**8)
    for path in photos[:2]:
        inbox.add(path.read_bytes(), {"name": "flowers", "version": 1}, [{"label": "tulips", "score": 0.4}])
    try:
        with server.client(headers={"X-API-Key": KEY}) as client:
            assert client.post("/datasets", json={"name": "garden"}).status_code == 201
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
            added = client.post("/datasets/garden/images", files=files, data={"label": "tulips"})
            assert added.status_code == 201, added.text
            yield server, client
    finally:
        server.stop()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    opened = browser.new_context(viewport={"width": 1280, "height": 800})
    opened.set_default_timeout(TIMEOUT_MS)
    try:
        yield opened
    finally:
        opened.close()


def shown_images(page: Any, selector: str) -> List[int]:
    """The natural widths of the images under ``selector`` once each has loaded or failed."""
    page.wait_for_function(
        "s => { const all = document.querySelectorAll(s); return all.length > 0 && "
        "Array.prototype.every.call(all, i => i.complete); }",
        arg=selector,
    )
    return page.eval_on_selector_all(selector, "all => all.map(i => i.naturalWidth)")  # type: ignore[no-any-return]


def save_key(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    with page.expect_response(lambda r: r.url.endswith("/auth/image-cookie")) as answer:
        page.click("#key-form button[type=submit]")
    assert answer.value.status == 200, answer.value.text()


def test_pages_and_docs_work_under_their_csp(
    context: Any, service: Tuple[ServerThread, httpx.Client]
) -> None:
    server, _ = service
    page = context.new_page()
    watch = Watch(page, server.url)
    save_key(page_at(page, server.url + "/console/models"), KEY)
    for name, path, _ in PAGES:
        response = page.goto(server.url + path)
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, name
        assert response.headers["x-frame-options"] == "DENY"
        assert ("blob:" in policy) == (name == "label"), name  # blob:/data: only where used
        page.wait_for_load_state("networkidle")
    # Swagger UI (offline) renders its operations, its inline set-up script allowed by hash.
    response = page.goto(server.url + "/docs")
    assert "'sha256-" in response.headers["content-security-policy"]
    page.wait_for_selector(".opblock-tag", timeout=TIMEOUT_MS)
    page.click("text=datasets")
    page.wait_for_selector(".opblock-summary-path")
    watch.check()


def page_at(page: Any, url: str) -> Any:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    return page


def test_images_show_with_keys_on(context: Any, service: Tuple[ServerThread, httpx.Client]) -> None:
    server, _ = service
    page = context.new_page()
    watch = Watch(page, server.url)
    save_key(page_at(page, server.url + "/console/models"), KEY)
    cookies = context.cookies()
    assert [c["name"] for c in cookies] == ["poets_images"] and cookies[0]["httpOnly"]
    assert cookies[0]["sameSite"] == "Strict" and KEY not in cookies[0]["value"]
    page.goto(server.url + "/console/datasets?name=garden")
    widths = shown_images(page, ".thumb img")
    assert len(widths) == PHOTOS and all(w > 0 for w in widths), widths
    page.goto(server.url + "/console/review")
    assert all(w > 0 for w in shown_images(page, "#stage img.photo, #queue img")), "inbox frames"
    # The export link downloads the zip with the same cookie.
    page.goto(server.url + "/console/datasets?name=garden")
    shown_images(page, ".thumb img")
    with page.expect_download() as download:
        page.click("#export")
    assert download.value.failure() is None
    assert Path(download.value.path()).read_bytes()[:2] == b"PK"
    watch.check()


def test_images_stay_hidden_without_the_key(context: Any, service: Tuple[ServerThread, httpx.Client]) -> None:
    server, _ = service
    page = context.new_page()
    refused: List[int] = []
    page.on("response", lambda r: refused.append(r.status) if "/thumbnail" in r.url else None)
    page.goto(server.url + "/console/datasets?name=garden")
    widths = shown_images(page, ".thumb img")
    assert len(widths) == PHOTOS and not any(widths), widths
    assert refused and set(refused) == {401}, refused


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    """Another site: a page that frames the console and posts to it without a preflight."""

    target = ""

    def do_GET(self) -> None:
        html = (
            "<!doctype html><iframe id=framed src='{0}/console/datasets'></iframe><script>"
            "var form = new FormData();"
            "form.append('label', 'planted');"
            "var photo = new Blob([new Uint8Array([255, 216, 255])], {{type: 'image/jpeg'}});"
            "form.append('files', photo, 'x.jpg');"
            "fetch('{0}/datasets/garden/images', {{method: 'POST', mode: 'no-cors', body: form}})"
            ".then(function () {{ document.title = 'sent'; }});"
            "</script>"
        ).format(self.target)
        data = html.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_another_site_can_neither_frame_nor_post(
    context: Any, service: Tuple[ServerThread, httpx.Client]
) -> None:
    server, client = service
    before = client.get("/datasets/garden").json()
    handler = type("Attacker", (_AttackerPage,), {"target": server.url})
    attacker = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        page = context.new_page()
        answers: List[Tuple[str, int]] = []
        page.on("response", lambda r: answers.append((r.url, r.status)))
        # localhost, not 127.0.0.1: another origin (and another site) than the API's.
        page.goto("http://localhost:{}/".format(attacker.server_address[1]))
        page.wait_for_function("document.title === 'sent'")
        page.wait_for_load_state("networkidle")
        posted = [status for url, status in answers if url.endswith("/datasets/garden/images")]
        assert posted == [403], answers  # the browser did send it; Poets refused it
        framed = page.frame_locator("#framed")
        assert framed.locator("#dataset-list").count() == 0  # the frame was blocked
    finally:
        attacker.shutdown()
        attacker.server_close()
    assert client.get("/datasets/garden").json() == before


def test_dns_rebinding_finds_no_console(browser: Any, service: Tuple[ServerThread, httpx.Client]) -> None:
    """A name of the attacker's resolving to this server (what rebinding achieves) is refused."""
    server, _ = service
    rules = "--host-resolver-rules=MAP rebind.example 127.0.0.1"
    launched = browser.browser_type.launch(executable_path=CHROMIUM, args=[*ARGS, rules])
    try:
        page = launched.new_page()
        response = page.goto("http://rebind.example:{}/console/datasets".format(server.port))
        assert response.status == 400
        assert "POETS_ALLOWED_HOSTS" in page.content()
    finally:
        launched.close()
