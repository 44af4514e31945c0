"""GET /metrics: Prometheus text, behind a key, adding up every gunicorn worker's counts."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from runner.records import Result
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


def _result_payload(model_name: str) -> dict:
    return Result(provider="bedrock", model_name=model_name, run_ts=datetime.now(UTC),
                  output_tokens=64, generate_time=1.0, tokens_per_second=64.0,
                  time_to_first_token=0.2).to_payload()


def test_counts_from_every_gunicorn_worker_add_up(mongo_uri, mongo_db_name, mongo_db):
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name), workers=2) as server:
        write = {"X-API-Key": TEST_KEYS["runner-a"]}
        repeated = _result_payload("sim.fast-v1")

        def call(job: tuple[str, str]) -> tuple[int, str]:
            # A fresh connection each time, so either worker may accept it.
            kind, path = job
            if kind == "stored":
                answer = requests.post(f"{server.url}{path}", json=_result_payload("sim.fast-v1"),
                                       headers=write, timeout=10)
            elif kind == "duplicate":
                answer = requests.post(f"{server.url}{path}", json=repeated, headers=write,
                                       timeout=10)
            else:
                answer = requests.get(f"{server.url}{path}",
                                      headers={} if kind == "no_key" else READ, timeout=10)
            with answer:
                return answer.status_code, kind

        expected = {"summary": 200, "bad_limit": 422, "no_key": 401, "stored": 201,
                    "duplicate": 200}
        sent = dict.fromkeys(expected, 0)
        requests.post(f"{server.url}/ingest", json=repeated, headers=write, timeout=10).close()
        pids: set[str] = set()
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(10):
                jobs = ([("summary", "/summary")] * 6 + [("bad_limit", "/results?limit=0")] * 3
                        + [("no_key", "/results")] * 3 + [("stored", "/ingest")] * 4
                        + [("duplicate", "/ingest")] * 2)
                for status, kind in pool.map(call, jobs):
                    assert status == expected[kind], kind
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
            assert _requests_total(samples, "/ingest", "201") == sent["stored"] + 1
            rejections = {labels: v for (name, labels), v in samples.items()
                          if name == "bench_ingest_rejections_total"}
            assert rejections[(("reason", "validation_error"),)] == sent["bad_limit"]
            assert rejections[(("reason", "unauthorized"),)] == sent["no_key"]
            records = {labels: v for (name, labels), v in samples.items()
                       if name == "bench_ingest_records_total"}
            assert records[(("kind", "result"), ("outcome", "created"))] == sent["stored"] + 1
            assert records[(("kind", "result"), ("outcome", "duplicate"))] == sent["duplicate"]
            assert samples[("bench_ingest_write_seconds_count", ())] >= sent["stored"] + 1
            # A gauge kept per worker is reported once per runner: the latest of them.
            last = [v for (name, labels), v in samples.items()
                    if name == "bench_ingest_last_result_timestamp_seconds"]
            assert len(last) == 1 and abs(last[0] - time.time()) < 120
            # The labelless counter appears once, summed, not once per worker.
            assert samples[("bench_ingest_db_errors_total", ())] == 0
        assert mongo_db["metrics_cloud_v2"].count_documents({}) == sent["stored"] + 1


@pytest.mark.parametrize("header", [{}, {"X-API-Key": "k" * 40}])
def test_metrics_stay_closed_to_strangers(client, header):
    response = client.get("/metrics", headers=header)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
