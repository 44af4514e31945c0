"""How many slow connections it takes to deny service, with gunicorn's stock gthread worker
and with the app's own (ingest_app/worker.py); prints one line per worker and count.

    .venv/bin/python bench/slow_clients.py [--counts 4,8,16,32,64,128,256,512]
        [--probes 3] [--probe-timeout 3]

For each count N, N connections to a fresh gunicorn (the repo's gunicorn.conf.py:
2 workers of 4 threads) send "POST /ingest HTTP/1.1" and then their headers one
byte a second, without a key (an attacker needs none). After 2 s, GET /health and
GET /ready are asked `--probes` times each; service is denied at N when any probe
gets no answer within `--probe-timeout` seconds. The database is a private
nx-27017. The first denied N is printed per worker ("none" when no N denied it).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ingest import gunicorn_env, start_gunicorn  # noqa: E402
from tests.support.mongo import MongoServer  # noqa: E402

WORKERS = {
    "stock gthread": ("--worker-class", "gthread"),
    "ingest_app.worker": (),
}
HEAD = b"POST /ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def hold(port: int, count: int, stop: threading.Event) -> list[socket.socket]:
    """Open `count` connections and drip their headers from one thread until stopped."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]

    def drip() -> None:
        position = 0
        while not stop.wait(1.0) and position < len(HEAD):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(HEAD[position:position + 1])
            position += 1

    for sock in socks:
        sock.send(HEAD[:1])
    threading.Thread(target=drip, daemon=True).start()
    return socks


def served(url: str, probes: int, timeout: float) -> tuple[bool, float]:
    """Whether every probe was answered 200 in time, and the slowest probe's seconds."""
    slowest = 0.0
    for _ in range(probes):
        for route in ("/health", "/ready"):
            started = time.monotonic()
            try:
                with requests.get(f"{url}{route}", timeout=timeout) as answer:
                    if answer.status_code != 200:
                        return False, time.monotonic() - started
            except requests.RequestException:
                return False, time.monotonic() - started
            slowest = max(slowest, time.monotonic() - started)
    return True, slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="4,8,16,32,64,128,256,512")
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--probe-timeout", type=float, default=3.0)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory(prefix="slow-clients-") as tmp:
        mongo = MongoServer(Path(tmp) / "mongo")
        mongo.start()
        try:
            for name, extra in WORKERS.items():
                denied_at = None
                for count in counts:
                    env = gunicorn_env(mongo.uri, "slow_clients")
                    with start_gunicorn(env, extra_args=extra) as server:
                        stop = threading.Event()
                        socks = hold(int(server.url.rsplit(":", 1)[1]), count, stop)
                        try:
                            time.sleep(2.0)
                            ok, slowest = served(server.url, args.probes, args.probe_timeout)
                        finally:
                            stop.set()
                            for sock in socks:
                                sock.close()
                    print(f"{name}: {count} slow connections: "
                          f"{'served' if ok else 'DENIED'} (slowest probe {slowest:.2f} s)",
                          flush=True)
                    if not ok:
                        denied_at = count
                        break
                print(f"{name}: service denied at {denied_at or 'none'} "
                      f"(of {','.join(map(str, counts))})", flush=True)
        finally:
            mongo.stop()


if __name__ == "__main__":
    main()
