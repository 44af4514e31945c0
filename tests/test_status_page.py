"""The status page at /: server-rendered, readable without JavaScript, drawn by a real browser."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ingest_app import create_app, db
from ingest_app.timestamps import parse_rfc3339
from tests.support.ingest import REPO, TEST_KEYS, TEST_READ_KEYS, gunicorn_env, start_gunicorn
from tests.support.seed import failure_doc, result_doc, seed

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class _Page(HTMLParser):
    """What a reader of the page sees: model sections, chart lines, failure rows, text."""

    def __init__(self) -> None:
        super().__init__()
        self.models: list[str] = []
        self.polylines: list[str] = []
        self.fingerprints: list[str] = []
        self.runners: list[str] = []
        self.stylesheets: list[str] = []
        self.scripts = 0
        self.meta: dict[str, str] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-model" in a:
            self.models.append(a["data-model"])
        elif tag == "polyline":
            self.polylines.append(a.get("points") or "")
        elif tag == "tr" and "data-fingerprint" in a:
            self.fingerprints.append(a["data-fingerprint"])
        elif tag == "tr" and "data-runner" in a:
            self.runners.append(a["data-runner"])
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.stylesheets.append(a.get("href", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "meta" and "name" in a:
            self.meta[a["name"]] = a.get("content", "")

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _basic(password: str, user: str = "anyone") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _seed_two_models(mongo_db) -> None:
    now = datetime.now(UTC)
    results = []
    for i in range(48):
        ts = now - timedelta(minutes=30 * i + 1)
        results.append(result_doc("sim.fast-v1", ts, tokens_per_second=180 + 40 * ((i % 6) / 5),
                                  ttft=0.15 + 0.01 * (i % 3)))
        results.append(result_doc("sim.steady-v1", ts, tokens_per_second=60 + 15 * ((i % 4) / 3),
                                  ttft=0.3))
    failures = [failure_doc("sim.steady-v1", now - timedelta(minutes=m), error_kind="throttled",
                            message="Too many requests, please wait before trying again.")
                for m in (2, 95, 400)]
    failures += [failure_doc("sim.retired-v1", now - timedelta(minutes=m), stage="call",
                             error_kind="model_unavailable",
                             message="This model version has reached the end of its life.")
                 for m in (3, 33)]
    seed(mongo_db, results=results, failures=failures)


@pytest.fixture(autouse=True)
def _indexes(mongo_db, ingest_settings):
    db.ensure_indexes(mongo_db, ingest_settings)


def test_page_is_closed_with_a_basic_challenge_when_read_is_not_public(client):
    response = client.get("/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="bench-ingest"')
    wrong = client.get("/", headers=_basic("not-a-key-" * 4))
    assert wrong.status_code == 401
    assert "WWW-Authenticate" in wrong.headers


@pytest.mark.parametrize("key", [TEST_KEYS["runner-a"], TEST_READ_KEYS["dashboard"]])
def test_page_opens_with_a_key_as_the_basic_password(client, mongo_db, key):
    _seed_two_models(mongo_db)
    response = client.get("/", headers=_basic(key))
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    page = _parse(response.get_data(as_text=True))
    assert page.models == ["sim.fast-v1", "sim.retired-v1", "sim.steady-v1"]


def test_page_opens_without_a_key_on_a_public_board(ingest_settings, mongo_db):
    app = create_app(replace(ingest_settings, public_read=True))
    try:
        with app.test_client() as client:
            assert client.get("/").status_code == 200
            # The metrics stay behind a key even on a public board.
            assert client.get("/metrics").status_code == 401
    finally:
        app.extensions["bench_ingest.db"].close()


def test_page_shows_a_table_and_a_drawn_sparkline_per_model_without_javascript(client, mongo_db):
    _seed_two_models(mongo_db)
    seed(mongo_db, results=[result_doc("sim.old-v1", datetime.now(UTC) - timedelta(days=3))])
    html = client.get("/", headers=_basic(TEST_KEYS["runner-a"])).get_data(as_text=True)
    page = _parse(html)
    assert page.scripts == 0
    assert page.meta["viewport"].startswith("width=device-width")
    assert page.stylesheets == ["/static/status.css"]
    # Two measured models draw a line; the retired and the silent one have none to draw.
    assert len(page.polylines) == 2
    for points in page.polylines:
        pairs = points.split()
        assert len(pairs) > 10
        assert all(re.fullmatch(r"\d+(\.\d+)?,\d+(\.\d+)?", pair) for pair in pairs)
    text = " ".join(page.text)
    assert "Success rate" in text and "Tok/s median / p90" in text
    assert "model_unavailable" in text
    old = re.search(r'data-model="sim.old-v1">(.*?)</section>', html, re.S).group(1)
    assert "no runs in 24h" in old and "3d ago" in old


def test_failures_are_grouped_by_fingerprint_with_count_and_latest_message(client, mongo_db):
    _seed_two_models(mongo_db)
    html = client.get("/", headers=_basic(TEST_KEYS["runner-a"])).get_data(as_text=True)
    page = _parse(html)
    assert len(page.fingerprints) == 2
    rows = re.findall(r'<tr data-fingerprint="[^"]+">(.*?)</tr>', html, re.S)
    assert re.search(r'class="num">3<', rows[0]) and "sim.steady-v1" in rows[0]
    assert "Too many requests, please wait" in rows[0]
    assert re.search(r'class="num">2<', rows[1]) and "end of its life" in rows[1]


def test_failure_messages_are_escaped_and_never_show_a_key(client, mongo_db):
    key = TEST_KEYS["runner-b"]
    seed(mongo_db, failures=[failure_doc(
        "m", datetime.now(UTC) - timedelta(minutes=1), error_kind="auth",
        message=f"<script>alert(1)</script> denied for {key} and AKIAABCDEFGHIJKLMNOP",
    )])
    html = client.get("/", headers=_basic(TEST_KEYS["runner-a"])).get_data(as_text=True)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert key not in html and "AKIAABCDEFGHIJKLMNOP" not in html
    assert "[redacted]" in html


def test_page_offers_other_windows_and_refuses_a_bad_one(client, mongo_db):
    _seed_two_models(mongo_db)
    headers = _basic(TEST_KEYS["runner-a"])
    html = client.get("/?window=7d", headers=headers).get_data(as_text=True)
    assert 'href="/?window=1h"' in html and 'href="/?window=24h"' in html
    assert '<strong aria-current="page">7d</strong>' in html
    assert client.get("/?window=forever", headers=headers).status_code == 422


def test_empty_database_renders_a_page_that_says_so(client):
    response = client.get("/", headers=_basic(TEST_KEYS["runner-a"]))
    assert response.status_code == 200
    text = " ".join(_parse(response.get_data(as_text=True)).text)
    assert "No results or failures stored yet." in text and "No failures." in text


def test_stylesheet_is_served_by_the_app_itself(client):
    response = client.get("/static/status.css")
    assert response.status_code == 200
    assert response.mimetype == "text/css"
    assert "@media" in response.get_data(as_text=True)
    response.close()


def _chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         *extra, url],
        capture_output=True, text=True, timeout=90, check=False,
    )


@pytest.mark.browser
def test_headless_chromium_renders_both_models_and_draws_their_charts(
        tmp_path, mongo_uri, mongo_db_name, mongo_db):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make browser installs it)")
    _seed_two_models(mongo_db)
    ARTIFACTS.mkdir(exist_ok=True)
    env = gunicorn_env(mongo_uri, mongo_db_name, INGEST_PUBLIC_READ="true")
    with start_gunicorn(env, workers=2) as server:
        dom = _chromium(f"{server.url}/", tmp_path, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        desktop = ARTIFACTS / "status-page-desktop.png"
        phone = ARTIFACTS / "status-page-phone.png"
        for path, size in ((desktop, "1280,1000"), (phone, "390,1400")):
            path.unlink(missing_ok=True)
            shot = _chromium(f"{server.url}/", tmp_path, f"--screenshot={path}",
                             f"--window-size={size}")
            assert shot.returncode == 0, shot.stderr[-2000:]
            assert path.stat().st_size > 10_000
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # The browser fetched the app's own stylesheet (gunicorn logs the request).
        assert '"GET /static/status.css HTTP/1.1" 200' in server.log()
    page = _parse(dom.stdout)
    assert page.models == ["sim.fast-v1", "sim.retired-v1", "sim.steady-v1"]
    assert len(page.polylines) == 2 and all(len(p.split()) > 10 for p in page.polylines)


def test_page_answers_carry_security_headers(client, mongo_db):
    _seed_two_models(mongo_db)
    for response in (client.get("/", headers=_basic(TEST_KEYS["runner-a"])), client.get("/")):
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    # The JSON API sends nosniff too: an error body is never sniffed into HTML.
    assert client.get("/health").headers["X-Content-Type-Options"] == "nosniff"


def test_a_401_on_the_page_says_basic_auth_with_a_key_as_password_opens_it(client):
    error = client.get("/").get_json()["error"]
    assert error["code"] == "unauthorized"
    assert "Basic" in error["message"] and "password" in error["message"]


def _catalogue() -> dict:
    return {"provider": "bedrock", "region": "us-east-1",
            "started_at": datetime.now(UTC).isoformat(), "pagination_complete": True,
            "models": [{"model_id": "sim.fast-v1", "kind": "foundation"}]}


def _runner_rows(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-runner="([^"]+)">(.*?)</tr>', html, re.S))


def test_page_and_summary_show_when_each_runner_last_fetched_and_posted(client, mongo_db):
    headers = _basic(TEST_KEYS["runner-a"])
    text = " ".join(_parse(client.get("/", headers=headers).get_data(as_text=True)).text)
    assert "No runner has fetched a worklist or posted a catalogue yet." in text
    runner_a, runner_b = ({"X-API-Key": TEST_KEYS[n]} for n in ("runner-a", "runner-b"))
    before = datetime.now(UTC).replace(microsecond=0)
    assert client.get("/runner-config", headers=runner_a).status_code == 200
    assert client.post("/ingest/catalog", json=_catalogue(), headers=runner_a).status_code == 201
    assert client.get("/runner-config", headers=runner_b).status_code == 200

    html = client.get("/", headers=headers).get_data(as_text=True)
    assert _parse(html).runners == ["runner-a", "runner-b"]
    rows = _runner_rows(html)
    assert rows["runner-a"].count("<time datetime=") == 2
    assert re.search(r"\(\d+s ago, bedrock\)", rows["runner-a"])
    assert rows["runner-b"].count("<time datetime=") == 1 and "never" in rows["runner-b"]

    runners = client.get("/summary", headers=runner_b).get_json()["runners"]
    assert [r["runner"] for r in runners] == ["runner-a", "runner-b"]
    assert runners[1]["last_catalog_at"] is None and runners[1]["last_config_at"]
    for row in runners:
        assert row["last_config_provider"] == "bedrock"
        assert before <= parse_rfc3339(row["last_config_at"]) <= datetime.now(UTC)
    assert runners[0]["last_catalog_provider"] == "bedrock"


@pytest.mark.browser
def test_headless_chromium_shows_the_runners_a_real_server_saw(tmp_path, mongo_uri,
                                                                 mongo_db_name, mongo_db):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make browser installs it)")
    import requests

    env = gunicorn_env(mongo_uri, mongo_db_name, INGEST_PUBLIC_READ="true")
    with start_gunicorn(env, workers=2) as server:
        for name in ("runner-a", "runner-b"):
            key = {"X-API-Key": TEST_KEYS[name]}
            assert requests.get(f"{server.url}/runner-config", headers=key,
                                timeout=10).status_code == 200
        assert requests.post(f"{server.url}/ingest/catalog", json=_catalogue(),
                             headers={"X-API-Key": TEST_KEYS["runner-b"]},
                             timeout=10).status_code == 201
        dom = _chromium(f"{server.url}/", tmp_path, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
    page = _parse(dom.stdout)
    assert page.runners == ["runner-a", "runner-b"]
    rows = _runner_rows(dom.stdout)
    assert rows["runner-a"].count("<time datetime=") == 1 and "never" in rows["runner-a"]
    assert rows["runner-b"].count("<time datetime=") == 2 and "never" not in rows["runner-b"]
