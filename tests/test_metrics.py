"""GET /metrics: Prometheus text, behind a key, adding up every gunicorn worker's counts."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ingest import TEST_KEYS, TEST_READ_KEYS, gunicorn_env, start_gunicorn

READ = {"X-API-Key": TEST_READ_KEYS["dashboard"]}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _requests_total(samples, route: str, status: str) -> float:
    key = ("bench_ingest_http_requests_total", (("route", route), ("status", status)))
    return samples.get(key, 0.0)


def test_metrics_need_a_key_and_accept_a_read_key(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": "x" * 40}).status_code == 401
    response = client.get("/metrics", headers=READ)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["Cache-Control"] == "no-store"
    text = response.get_data(as_text=True)
    for name in ("bench_ingest_http_requests_total", "bench_ingest_records_total",
                 "bench_ingest_rejections_total", "bench_ingest_db_errors_total",
                 "bench_ingest_write_seconds", "bench_ingest_last_result_timestamp_seconds"):
        assert f"# TYPE {name.removesuffix('_total')}" in text


def test_counts_from_every_gunicorn_worker_add_up(mongo_uri, mongo_db_name, mongo_db):
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name), workers=2) as server:

        def fetch(path: str, headers: dict[str, str]) -> int:
            # A fresh connection each time, so either worker may accept it.
            with requests.get(f"{server.url}{path}", headers=headers, timeout=10) as answer:
                return answer.status_code

        sent = {"summary": 0, "bad_limit": 0, "no_key": 0}
        pids: set[str] = set()
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(10):
                jobs = ([("/summary", READ, "summary")] * 8 + [("/results?limit=0", READ,
                        "bad_limit")] * 4 + [("/results", {}, "no_key")] * 4)
                statuses = list(pool.map(lambda job: (fetch(job[0], job[1]), job[2]), jobs))
                for status, kind in statuses:
                    assert status == {"summary": 200, "bad_limit": 422, "no_key": 401}[kind]
                    sent[kind] += 1
                # The access log line carries the pid of the worker that answered.
                pids = set(re.findall(r" (\d+) .*\"GET /summary HTTP", server.log()))
                if len(pids) >= 2:
                    break
        assert len(pids) >= 2, "every request went to one worker; the sum proves nothing"
        assert len(server.worker_pids()) == 2
        assert {int(pid) for pid in pids} <= server.worker_pids()

        # Whichever worker answers the scrape, it reports every worker's counts.
        for _ in range(6):
            with requests.get(f"{server.url}/metrics",
                              headers={"Authorization": f"Bearer {TEST_KEYS['runner-b']}"},
                              timeout=10) as answer:
                assert answer.status_code == 200
                samples = _samples(answer.text)
            assert _requests_total(samples, "/summary", "200") == sent["summary"]
            assert _requests_total(samples, "/results", "422") == sent["bad_limit"]
            assert _requests_total(samples, "/results", "401") == sent["no_key"]
            rejections = {labels: v for (name, labels), v in samples.items()
                          if name == "bench_ingest_rejections_total"}
            assert rejections[(("reason", "invalid_query"),)] == sent["bad_limit"]
            assert rejections[(("reason", "unauthorized"),)] == sent["no_key"]
            # The labelless counter appears once, summed, not once per worker.
            assert samples[("bench_ingest_db_errors_total", ())] == 0


@pytest.mark.parametrize("header", [{}, {"X-API-Key": "k" * 40}])
def test_metrics_stay_closed_to_strangers(client, header):
    response = client.get("/metrics", headers=header)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
