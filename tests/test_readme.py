"""The README's "Run each part by hand" section works when pasted into a shell.

Its ```sh blocks are fed, as written, to one bash reading from stdin, the way a
person pastes them into one terminal, from the top of the checkout (whose .venv
the test run uses). Two things are added around them, neither changing a
command: `set -e`, so the first failing command ends the shell and the test
instead of being scrolled past, and one marker line after the next-to-last
block, so the test can look into the database before the last block stops it.
Every server is started on port 0 by the README itself, so nothing clashes with
a port in use; scratch files go to this test's own directory (TMPDIR). Whatever
the shell started is in its own process group, killed at the end if the
README's own stop block left anything running.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pymongo

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Run each part by hand"
MARK = "README-TEST-MARK"
# Generous bounds that only catch a hang: the whole section takes a few seconds.
RUN_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
# Settings a developer's shell may hold that a fresh shell would not.
FOREIGN_PREFIXES = ("AWS_", "MONGODB_", "INGEST_", "BENCH_RUNNER_", "BENCHMARK_", "GUNICORN_",
                    "PROMETHEUS_", "WEB_CONCURRENCY", "PORT")


def by_hand_blocks() -> list[str]:
    """The ```sh blocks under the README's by-hand heading, in order."""
    readme = (REPO / "README.md").read_text()
    assert HEADING in readme, f"the README has no {HEADING!r} section"
    section = readme.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def test_the_by_hand_section_names_every_part_a_newcomer_needs():
    text = "\n".join(by_hand_blocks())
    for needed in ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_ENDPOINT_URL_BEDROCK=",
                   "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                   ".venv/bin/nx-27017", ".venv/bin/gunicorn", "INGEST_API_KEYS",
                   ".venv/bin/bench-runner simulate", ".venv/bin/bench-runner once"):
        assert needed in text, f"{needed} is not in the by-hand section"
    # Every command comes from the project's environment, never from whatever is on PATH.
    for command in ("flask", "gunicorn", "bench-runner", "nx-27017", "python"):
        bare = re.findall(rf"(?:^|[\s;&|(]){re.escape(command)}\s", text, flags=re.MULTILINE)
        assert not bare, f"a bare {command} in the by-hand section: {bare}"


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _read_until(lines: queue.Queue, seen: list[str], until: str | None, timeout: float) -> bool:
    """Collect output lines into `seen` until one starts with `until` (or the end)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            return False
        if line is None:
            return until is None
        seen.append(line)
        if until is not None and line.startswith(until):
            return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _still_running(pgid: int, scratch: Path) -> str:
    """What a hung stop block left: each live process of the shell's group, what its
    threads wait in, and the last lines of every log under the scratch directory."""
    report = []
    for proc in sorted(Path("/proc").glob("[0-9]*")):
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            waits = sorted({(task / "wchan").read_text() for task in (proc / "task").iterdir()})
        except (OSError, ProcessLookupError):
            continue
        report.append(f"still running: {proc.name} {cmd.strip()} (threads wait in {waits})")
    for log in sorted(scratch.rglob("*")):
        if log.is_file() and log.suffix in (".log", ".out"):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            report.append(f"--- last lines of {log.name}:\n" + "\n".join(tail))
    return "\n".join(report)


def test_the_by_hand_section_stores_results_and_the_run_exits_0(tmp_path):
    blocks = by_hand_blocks()
    assert len(blocks) >= 2, "the by-hand section needs its steps and a last block that stops"
    *steps, stop = blocks
    assert "kill" in stop, "the last by-hand block should stop what the others started"
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
    env["TMPDIR"] = str(tmp_path)
    shell = subprocess.Popen(
        ["bash", "-s"], cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    pgid = shell.pid
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_reader, args=(shell.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        shell.stdin.write("set -e\n" + "\n".join(steps)
                          + f'\nprintf "{MARK} %s\\n" "$MONGODB_URI"\n')
        shell.stdin.flush()
        marked = _read_until(lines, seen, MARK, RUN_TIMEOUT)
        output = "".join(seen)
        assert marked, f"the by-hand steps did not all run:\n{output}"
        assert "bench-runner once exited with 0" in output, output

        # What a user sees in the database: one result per model, sent under the README's key.
        uri = seen[-1].split(" ", 1)[1].strip()
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            db = client["llm-bench"]
            results = list(db["metrics_cloud_v2"].find({}, {"_id": False}))
            failures = db["errors_cloud"].count_documents({})
        assert sorted(r["model_name"] for r in results) == ["sim.fast-v1", "sim.steady-v1"]
        assert all(r["runner_id"] == "by-hand" for r in results)
        assert all(r["output_tokens"] > 0 and r["time_to_first_token"] > 0 for r in results)
        assert failures == 0
        assert "2 results, 0 failures" in output
        assert "pending: 0" in output and "dead: 0" in output

        # The README's own last block stops every process the others started.
        shell.stdin.write(stop + "\nexit\n")
        shell.stdin.close()
        ended = _read_until(lines, seen, None, STOP_TIMEOUT)
        assert ended, "".join(seen) + "\nthe stop block did not end:\n" + _still_running(
            pgid, tmp_path)
        assert shell.wait(timeout=STOP_TIMEOUT) == 0, "".join(seen)
        assert _wait_group_gone(pgid, STOP_TIMEOUT), "the stop block left a process running"
    finally:
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            shell.wait(timeout=10)
        for stream in (shell.stdin, shell.stdout):
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        reader.join(timeout=10)


def test_the_readme_maps_every_page_of_the_docs():
    readme = (REPO / "README.md").read_text()
    pages = sorted(path.name for path in (REPO / "docs").glob("*.md"))
    assert {"contract.md", "reliability.md"} <= set(pages)
    for page in pages:
        assert f"(docs/{page})" in readme, f"docs/{page} is not in the README's map"
