"""Cycle time of 12 models at --concurrency 4 against --concurrency 1, and CLI start-up time.

Runs the real cycle (real boto3 against the Bedrock simulator in its own process,
real HTTP to a small ingest stand-in, a real outbox on disk) and prints medians
side by side:

    python bench/runner_cycle.py [--repeat 3] [--models 12]

Targets: speed-up >= 3.2x; `bench-runner --help` within 2x of `python -c 'import click'`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.cycle import run_cycle  # noqa: E402
from runner.ingest_client import IngestClient  # noqa: E402
from runner.outbox import Outbox  # noqa: E402
from runner.provider import get_provider  # noqa: E402
from runner.settings import Settings  # noqa: E402
from tests.support.mongo import free_port, wait_for_port  # noqa: E402

# One simulated model: 0.3 s to the first token, 16 deltas of 4 tokens 20 ms apart.
MODEL = {"ttft": 0.3, "gap": 0.02, "tokens_per_delta": 4, "output_tokens": 64}


class _Ingest(BaseHTTPRequestHandler):
    """Accepts every batch and error, as the ingest API does for new ids."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/batch"):
            body, status = {"results": [{"status": "created"}] * len(doc["results"])}, 200
        else:
            body, status = {"status": "created"}, 201
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)




def time_cycle(models: tuple[str, ...], concurrency: int, ingest_url: str, work: Path) -> float:
    """Seconds for one cycle of `models` after the provider is warm."""
    state = Path(tempfile.mkdtemp(dir=work))
    settings = Settings(state_dir=state, ingest_url=ingest_url, api_key="bench-" + "k" * 34,
                        models=models, concurrency=concurrency, region="us-east-1")
    provider = get_provider("bedrock", region="us-east-1", concurrency=concurrency,
                            call_timeout=30.0, retries=0)
    try:
        provider.warm()
        with IngestClient(settings) as client:
            started = time.perf_counter()
            report = run_cycle(settings, provider, Outbox.from_settings(settings), client,
                               warm=False)
            seconds = time.perf_counter() - started
    finally:
        provider.close()
    measured = sum(o.ok for o in report.outcomes)
    if measured != len(models) or report.pending:
        raise SystemExit(f"cycle incomplete: {measured}/{len(models)} measured, "
                         f"{report.pending} pending")
    return seconds


def time_command(argv: list[str], repeat: int) -> list[float]:
    """Wall-clock seconds of each of `repeat` runs of a command."""
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    """Run both benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="cycles per concurrency")
    parser.add_argument("--models", type=int, default=12, help="models in a cycle")
    parser.add_argument("--startup-repeat", type=int, default=20)
    args = parser.parse_args()

    models = tuple(f"sim.bench-{i:02d}-v1" for i in range(args.models))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "sim.json"
        config.write_text(json.dumps({"models": {m: MODEL for m in models}}))
        port = free_port()
        sim = subprocess.Popen([sys.executable, "-m", "runner.simulator", str(port),
                                str(config)], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        ingest = ThreadingHTTPServer(("127.0.0.1", 0), _Ingest)
        ingest.daemon_threads = True
        thread = threading.Thread(target=ingest.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        for name in list(os.environ):
            if name.startswith("AWS_"):
                del os.environ[name]
        os.environ.update({
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": f"http://127.0.0.1:{port}",
            "AWS_ENDPOINT_URL_BEDROCK": f"http://127.0.0.1:{port}",
        })
        ingest_url = f"http://127.0.0.1:{ingest.server_address[1]}/ingest"
        try:
            wait_for_port("127.0.0.1", port)
            times: dict[int, list[float]] = {1: [], 4: []}
            for _ in range(args.repeat):
                for concurrency in (1, 4):  # interleaved, so drift hits both alike
                    times[concurrency].append(time_cycle(models, concurrency, ingest_url, work))
        finally:
            ingest.shutdown()
            ingest.server_close()
            sim.terminate()
            sim.wait(timeout=10)

    one, four = statistics.median(times[1]), statistics.median(times[4])
    print(f"cycle of {args.models} models (median of {args.repeat}; each model "
          f"~{MODEL['ttft'] + 15 * MODEL['gap']:.2f} s in the simulator)")
    print(f"  --concurrency 1: {one:.3f} s   runs: {', '.join(f'{t:.3f}' for t in times[1])}")
    print(f"  --concurrency 4: {four:.3f} s   runs: {', '.join(f'{t:.3f}' for t in times[4])}")
    print(f"  speed-up: {one / four:.2f}x (target >= 3.2x)")

    runner_exe = str(Path(sys.executable).with_name("bench-runner"))
    n = args.startup_repeat
    help_times, click_times = [], []
    for _ in range(n):  # alternate so both see the same machine load
        help_times += time_command([runner_exe, "--help"], 1)
        click_times += time_command([sys.executable, "-c", "import click"], 1)
    h, c = statistics.median(help_times), statistics.median(click_times)
    print(f"start-up (median of {n})")
    print(f"  bench-runner --help:        {h * 1000:.1f} ms")
    print(f"  python -c 'import click':   {c * 1000:.1f} ms")
    print(f"  ratio: {h / c:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
