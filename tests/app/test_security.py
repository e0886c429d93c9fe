"""Hardening through a real uvicorn server: other sites' requests, Host names, image data
behind the key (and the image cookie that lets the console's <img> tags through), and the
security headers on every answer.

The cross-site requests are sent as a browser sends them (an ``Origin`` or ``Referer`` of
another site on a multipart POST, the "simple request" a ``no-cors`` fetch makes without a
preflight); curl and cameras send neither. The browser side is in
tests/browser/test_console_security.py.
"""

import itertools
from pathlib import Path
from typing import Any, Dict, Iterator

import httpx
import pytest

from app.guard import host_allowed
from app.image_access import COOKIE, make_token
from poets.engine.errors import ConfigurationError
from poets.engine.inbox import Inbox
from poets.engine.settings import Settings
from tests.app.conftest import assert_error, settings_for
from tests.app.images import encode, noise

pytestmark = pytest.mark.integration

KEY = "security-test-key"
EVIL = "http://evil.example"
_seeds = itertools.count()


def jpeg(seed: int = 0) -> bytes:
    return encode(noise(64, 48, seed=seed), "JPEG")


def upload(client: httpx.Client, dataset: str, headers: Dict[str, str]) -> httpx.Response:
    files = [("files", ("a.jpg", jpeg(next(_seeds)), "image/jpeg"))]
    return client.post(
        "/datasets/{}/images".format(dataset), files=files, data={"label": "cat"}, headers=headers
    )


@pytest.fixture(scope="module")
def open_server(serve: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    """Keys off, as most LANs run it; one listed origin and one listed host name."""
    home = tmp_path_factory.mktemp("security-open")
    return serve(
        settings_for(
            home,
            backbone_dir,
            allowed_origins=("https://tools.example:8443",),
            allowed_hosts=("poets.lan", ".farm.example"),
        )
    )


@pytest.fixture(scope="module")
def keyed_server(serve: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    home = tmp_path_factory.mktemp("security-keyed")
    return serve(settings_for(home, backbone_dir, api_keys=(KEY, "other-key"), image_cookie_s=600.0))


@pytest.fixture(scope="module")
def client(open_server: Any) -> Iterator[httpx.Client]:
    with open_server.client() as client:
        assert client.post("/datasets", json={"name": "yard"}).status_code == 201
        yield client


# -- item 1: other sites' pages may not change anything -------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Referer": EVIL + "/page.html"},  # an older browser: no Origin, a Referer
        {"Origin": EVIL, "Referer": "http://127.0.0.1/"},  # Origin decides
    ],
)
def test_a_cross_site_upload_is_refused(client: httpx.Client, headers: Dict[str, str]) -> None:
    body = assert_error(upload(client, "yard", headers), 403, "cross_site_request")
    assert "POETS_ALLOWED_ORIGINS" in body["detail"]
    assert client.get("/datasets/yard").json()["images"] == 0


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/models/default/versions/1/activate"),
        ("POST", "/models/default/versions/1/pin"),
        ("POST", "/retrain"),
        ("POST", "/label"),
        ("DELETE", "/datasets/yard"),
        ("PATCH", "/datasets/yard/classes/cat"),
        ("DELETE", "/jobs/abc"),
    ],
)
def test_every_state_changing_route_refuses_other_sites(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(
        method, path, content=b"x", headers={"Origin": EVIL, "Content-Type": "text/plain"}
    )
    assert_error(response, 403, "cross_site_request")
    assert client.get("/datasets/yard").status_code == 200


def test_curl_the_console_and_listed_origins_may(client: httpx.Client, open_server: Any) -> None:
    port = open_server.port
    before = client.get("/datasets/yard").json()["images"]
    for headers in (
        {},  # curl, a camera: no Origin, no Referer
        {"Origin": open_server.url},  # the console, served from this very host:port
        {"Origin": "http://localhost:{}".format(port), "Host": "localhost:{}".format(port)},
        {"Referer": open_server.url + "/console/datasets?name=yard"},
        {"Origin": "https://tools.example:8443"},  # POETS_ALLOWED_ORIGINS
    ):
        assert upload(client, "yard", headers).status_code == 201, headers
    # Same host, another port: another origin.
    other = {"Origin": "http://127.0.0.1:{}".format(port + 1)}
    assert_error(upload(client, "yard", other), 403, "cross_site_request")
    assert client.get("/datasets/yard").json()["images"] == before + 5


def test_reads_are_not_origin_checked(client: httpx.Client) -> None:
    # A cross-site page can send a GET anyway (an <img>, a link); without CORS headers it
    # cannot read the answer. What keeps it out with keys on is the key (below).
    assert client.get("/datasets", headers={"Origin": EVIL}).status_code == 200


# -- item 1: Host names (DNS rebinding) -----------------------------------------------------
@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "poets.lan.evil.example", "farm.example.com"]
)
def test_unknown_host_names_are_refused(client: httpx.Client, host: str) -> None:
    body = assert_error(client.get("/datasets", headers={"Host": host}), 400, "host_not_allowed")
    assert "POETS_ALLOWED_HOSTS" in body["detail"]
    # Refused before anything runs: no upload either, whatever its Origin.
    assert_error(upload(client, "yard", {"Host": host, "Origin": "http://" + host}), 400, "host_not_allowed")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "192.168.1.20:8000",
        "[::1]:8000",
        "localhost",
        "LOCALHOST:80",
        "cam.localhost",
        "poets.lan",
        "POETS.LAN.",
        "barn.farm.example",
        "farm.example",
    ],
)
def test_ip_addresses_localhost_and_listed_names_are_answered(client: httpx.Client, host: str) -> None:
    assert client.get("/datasets", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("origin", ["tools.example", "https://tools.example/path", "ftp://x", "null"])
def test_a_malformed_allowed_origin_stops_the_app_at_once(tmp_path: Path, origin: str) -> None:
    from app.main import create_app

    with pytest.raises(ConfigurationError, match="POETS_ALLOWED_ORIGINS"):
        create_app(Settings(home=tmp_path, allowed_origins=(origin,)))


def test_host_rules() -> None:
    assert host_allowed("10.0.0.7", ()) and host_allowed("fe80::1", ()) and host_allowed("localhost", ())
    assert not host_allowed("poets.lan", ())
    assert host_allowed("anything.example", ("*",))
    assert host_allowed("a.b.example", (".b.example",)) and not host_allowed("ab.example", (".b.example",))


# -- item 2: image data needs the key when keys are on --------------------------------------
@pytest.fixture(scope="module")
def images(keyed_server: Any) -> Dict[str, str]:
    """One URL of each kind of image data: dataset image, thumbnail, archive, inbox frame..."""
    with keyed_server.client(headers={"X-API-Key": KEY}) as client:
        assert client.post("/datasets", json={"name": "yard"}).status_code == 201
        added = upload(client, "yard", {})
        assert added.status_code == 201, added.text
        image = client.get("/datasets/yard/images").json()["items"][0]
    settings = keyed_server.settings
    frame = Inbox(settings.inbox_dir, 10, 10**8).add(
        jpeg(next(_seeds)), {"name": "m", "version": 1}, [{"label": "cat", "score": 0.4}]
    )
    return {
        "image": image["url"],
        "thumbnail": image["thumbnail"],
        "archive": "/datasets/yard/archive",
        "frame": "/review/{}/image".format(frame),
        "frame thumbnail": "/review/{}/thumbnail".format(frame),
        # The key is checked before the job is looked up: any id says whether it is guarded.
        "misclassified": "/jobs/{}/misclassified/0".format("0" * 32),
    }


def test_image_data_needs_the_key(keyed_server: Any, images: Dict[str, str]) -> None:
    with keyed_server.client() as anyone, keyed_server.client(headers={"X-API-Key": KEY}) as keyed:
        for kind, url in images.items():
            body = assert_error(anyone.get(url), 401, "unauthorized")
            assert "X-API-Key" in body["detail"], kind
            assert_error(anyone.get(url, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
            if kind != "misclassified":
                assert keyed.get(url).status_code == 200, kind
        assert anyone.get("/datasets/yard/images").status_code == 200  # the listing is not image data


def test_the_image_cookie_lets_image_tags_in_and_nothing_else(
    keyed_server: Any, images: Dict[str, str]
) -> None:
    with keyed_server.client() as browser:
        assert_error(browser.post("/auth/image-cookie"), 401, "unauthorized")
        given = browser.post("/auth/image-cookie", headers={"X-API-Key": KEY})
        assert given.status_code == 200 and given.json() == {"needed": True, "expires_in": 600}
        cookie = given.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Max-Age=600" in cookie
        assert KEY not in cookie  # a signature, never the key
        for kind, url in images.items():
            if kind != "misclassified":
                assert browser.get(url).status_code == 200, kind
        # The cookie authorises image reads only: with it alone nothing can be changed.
        assert_error(browser.post("/datasets", json={"name": "x"}), 401, "unauthorized")
        assert_error(browser.delete("/datasets/yard"), 401, "unauthorized")
        assert browser.delete("/auth/image-cookie").status_code == 200
        assert_error(browser.get(images["image"]), 401, "unauthorized")


@pytest.mark.parametrize(
    "token",
    [
        make_token(KEY, 1000),  # expired long ago
        make_token("a-removed-key", 4102444800),  # not signed by a configured key
        "4102444800.0000",
        "garbage",
        "\u00b2.0",  # a digit to str.isdigit(), not to int()
    ],
)
def test_an_expired_or_forged_cookie_is_refused(
    keyed_server: Any, images: Dict[str, str], token: str
) -> None:
    cookie = "{}={}".format(COOKIE, token).encode("latin-1")  # bytes: httpx sends str as ASCII only
    with keyed_server.client() as browser:
        body = assert_error(browser.get(images["thumbnail"], headers={"Cookie": cookie}), 401, "unauthorized")
        assert "POETS_IMAGE_COOKIE_S" in body["detail"] and "/auth/image-cookie" in body["detail"]


def test_a_cookie_from_either_key_works(keyed_server: Any, images: Dict[str, str]) -> None:
    with keyed_server.client(cookies={COOKIE: make_token("other-key", 4102444800)}) as browser:
        assert browser.get(images["image"]).status_code == 200


def test_images_stay_open_with_keys_off(client: httpx.Client) -> None:
    image = client.get("/datasets/yard/images").json()["items"][0]
    assert client.get(image["thumbnail"]).status_code == 200
    assert client.post("/auth/image-cookie").json() == {"needed": False, "expires_in": None}


# -- item 4: headers ------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/console/datasets", "/healthz", "/datasets", "/docs", "/nowhere"])
def test_every_answer_forbids_framing(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, path
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_blob_and_data_images_only_where_used(client: httpx.Client) -> None:
    assert (
        "img-src 'self' blob: data:" in client.get("/").headers["content-security-policy"]
    )  # the label page
    for path in ("/console/datasets", "/console/review", "/console/jobs", "/console/models", "/datasets"):
        policy = client.get(path).headers["content-security-policy"]
        assert "blob:" not in policy and "data:" not in policy and "unsafe-eval" not in policy, path
    docs = client.get("/docs").headers["content-security-policy"]
    assert "'sha256-" in docs and "'unsafe-inline'" not in docs.split("script-src")[1].split(";")[0]
