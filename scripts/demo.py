"""The whole pipeline on one machine: what `make demo` runs.

Starts an embedded MongoDB-protocol server (nx-27017, data under .demo/), the
ingest app under gunicorn with a freshly generated key, and the Bedrock
simulator with its embedded models (two of which fail on purpose); runs
`bench-runner once` against them; then measures one model of each other
provider (OpenAI-compatible, Anthropic) on its own simulator, beside Bedrock; then shows
what landed and stops everything it started, also on Ctrl-C or an error.

    python scripts/demo.py                 # simulator, embedded models
    python scripts/demo.py --keep          # leave the services up until Ctrl-C
    python scripts/demo.py --workdir DIR   # data, outbox and logs in DIR, not .demo/

The same flow against real Bedrock (real credentials, real cost; the
simulator is not started and boto3 finds credentials its usual way):

    AWS_PROFILE=... python scripts/demo.py --real-bedrock --region us-east-1 \\
        --models us.anthropic.claude-3-5-haiku-20241022-v1:0,amazon.nova-micro-v1:0

Exit status: 0 when the pipeline behaved as designed (every model asked ends
as exactly one stored result or one stored failure record, and nothing is
left in the outbox); 1 otherwise. A failing model is expected and does not
make the demo fail: the runner's own exit code says a model failed, and the
demo judges by what landed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pymongo  # noqa: E402 - after the path: the demo runs from a checkout

from runner.anthropic_simulator import DEFAULT_KEY as ANTHROPIC_SIM_KEY  # noqa: E402
from runner.simulator import GEO_PREFIXES, SimulatorConfig  # noqa: E402

DB_NAME = "llm-bench"
RESULTS = "metrics_cloud_v2"
ERRORS = "errors_cloud"
RUNNER_NAME = "demo-runner"
START_TIMEOUT = 30.0


class DemoError(Exception):
    """Something the demo needs did not come up; the message says what and where to look."""


def wait_until(ready: Any, what: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll ready() until it is true; fail early if the process dies."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"{what} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.1)
    raise DemoError(f"{what} did not come up within {START_TIMEOUT:.0f}s; see {log}")


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The status code of a GET, errors included."""
    # Only the demo's own http://127.0.0.1 URLs come here.
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return answer.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def executable(name: str) -> str:
    """A console script of this environment (beside the interpreter), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise DemoError(f"{name} not found: run `make demo` (it installs '.[dev]')")
    return found


class Services:
    """Every process the demo starts, each in its own process group, all stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, what: str, argv: list[str], env: dict[str, str], log_name: str,
              ) -> tuple[subprocess.Popen, Path]:
        """Start one background process with its output in <workdir>/<log_name>."""
        log = self.workdir / log_name
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out,  # noqa: S603
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs.append((what, proc))
        return proc, log

    def stop_all(self) -> None:
        """SIGTERM every group (newest first), then SIGKILL what is left."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for what, proc in reversed(self.procs):
            # nx-27017 can miss a SIGTERM (one that lands in a finalizer is swallowed):
            # it is sent again each second, which a server already stopping ignores.
            for _ in range(10):
                try:
                    proc.wait(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
            else:
                print(f"  {what} did not stop on SIGTERM; killing it")
            # Whatever is left in the group (gunicorn workers of a killed master).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so the same cleanup runs for both."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def bound_port(log: Path, pattern: str, what: str, proc: subprocess.Popen) -> int:
    """The port a process reports in its log after binding port 0.

    Each process binds a port the kernel picks and says which: no other process
    on a busy machine can take it between choosing and binding.
    """
    found: list[int] = []

    def reported() -> bool:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            found.append(int(m.group(1)))
        return bool(m)

    wait_until(reported, what, proc, log)
    return found[0]


def start_mongo(services: Services, workdir: Path) -> str:
    """nx-27017 with its data under <workdir>/mongo; returns its URI."""
    data = workdir / "mongo"
    data.mkdir(parents=True, exist_ok=True)
    # Its own log and pid files: the defaults under /tmp are shared by every instance.
    proc, log = services.start(
        "nx-27017",
        [executable("nx-27017"), "--data-dir", str(data / "db"), "--host", "127.0.0.1",
         "-p", "0", "--log-file", str(data / "nx.log"), "--pid-file", str(data / "nx.pid")],
        dict(os.environ), "mongo.log")
    port = bound_port(log, r"Listening on 127\.0\.0\.1:(\d+)", "nx-27017", proc)
    uri = f"mongodb://127.0.0.1:{port}/"

    def answers() -> bool:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=1000) as client:
            client.admin.command("ping")
        return True

    wait_until(answers, "nx-27017", proc, log)
    return uri


def ingest_env(mongo_uri: str, key: str) -> dict[str, str]:
    """The ingest app's environment, for gunicorn and for its admin commands alike."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MONGODB_", "INGEST_", "GUNICORN_", "PROMETHEUS_", "WEB_"))}
    env.update(
        MONGODB_URI=mongo_uri, MONGODB_DB=DB_NAME,
        MONGODB_RESULTS_COLLECTION=RESULTS, MONGODB_ERRORS_COLLECTION=ERRORS,
        INGEST_API_KEYS=f"{RUNNER_NAME}:{key}",
        # The status page and read routes open without a key, on loopback only.
        INGEST_PUBLIC_READ="true",
    )
    return env


def start_ingest(services: Services, mongo_uri: str, key: str) -> str:
    """The ingest app under gunicorn with the repository's config; returns its base URL."""
    env = {**ingest_env(mongo_uri, key), "GUNICORN_BIND": "127.0.0.1:0", "WEB_CONCURRENCY": "2"}
    proc, log = services.start(
        "gunicorn",
        [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"),
         "ingest_app:create_app()"],
        env, "ingest.log")
    port = bound_port(log, r"Listening at: http://127\.0\.0\.1:(\d+)", "the ingest app", proc)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_status(f"{url}/ready") == 200, "the ingest app", proc, log)
    return url


def start_simulator(services: Services, protocol: str = "bedrock") -> str:
    """`bench-runner simulate --provider protocol` with its embedded models; returns its URL."""
    what = f"the {protocol} simulator"
    proc, log = services.start(
        what, [executable("bench-runner"), "simulate", "--provider", protocol, "--port", "0"],
        dict(os.environ), SIMULATOR_LOGS[protocol])
    port = bound_port(log, r"listening on http://127\.0\.0\.1:(\d+)", what, proc)
    wait_until(lambda: port_open(port), what, proc, log)
    return f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class OtherProvider:
    """One model of a provider measured beside Bedrock, on that provider's simulator."""

    provider: str  # bench-runner once --provider
    protocol: str  # bench-runner simulate --provider
    model: str
    env: Callable[[str], dict[str, str]]  # the runner's variables, from the simulator's URL


OTHER_PROVIDERS = (
    OtherProvider("openai", "openai-compatible", "sim-chat-fast",
                  lambda url: {"OPENAI_COMPATIBLE_BASE_URL": f"{url}/v1",
                               # The simulator takes any key; this one is for the demo only.
                               "OPENAI_API_KEY": "sk-demo-" + secrets.token_hex(12)}),
    # A model that thinks first: its thinking deltas are reasoning, never visible tokens.
    OtherProvider("anthropic", "anthropic", "claude-sim-thinker",
                  lambda url: {"ANTHROPIC_BASE_URL": url,
                               # The key the simulator's default config accepts.
                               "ANTHROPIC_API_KEY": ANTHROPIC_SIM_KEY}),
)
SIMULATOR_LOGS = {"bedrock": "simulator.log",
                  **{o.protocol: f"simulator-{o.protocol}.log" for o in OTHER_PROVIDERS}}


def display_name(model_id: str) -> str:
    """A readable name for the dashboard: "us.sim.fast-v1" -> "Sim Fast V1 (US)"."""
    prefix = next((p for p in GEO_PREFIXES if model_id.startswith(p)), "")
    words = re.split(r"[.\-_:]+", model_id[len(prefix):])
    name = " ".join(word.capitalize() for word in words if word)
    return f"{name} ({prefix.strip('.').upper()})" if prefix else name


def list_models(env: dict[str, str], models: list[tuple[str, str]]) -> None:
    """List each (provider, model) in `models`, enabled, with the operator's admin command.

    The dashboard files a model that `models` does not list as disabled, and its pages
    take the name they show from there; a real deployment lists its models the same way.
    """
    print("\n== flask --app ingest_app models add MODEL --display-name NAME --provider P ==")
    for provider, model in models:
        run = subprocess.run(  # noqa: S603 - argv built here
            [executable("flask"), "--app", "ingest_app", "models", "add", model,
             "--display-name", display_name(model), "--provider", provider],
            env=env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            check=False, timeout=60)
        said = (run.stdout.strip() or run.stderr.strip()).splitlines()
        print(f"  {provider} {model}: {said[-1] if said else f'exit {run.returncode}'}")
        if run.returncode != 0:
            raise DemoError(f"listing {model} failed: {run.stderr.strip()[-300:]}")


def simulated_models() -> tuple[list[str], set[str]]:
    """The models the demo asks the simulator for, and those of them meant to fail."""
    config = SimulatorConfig.default()
    models = list(config.models)
    failing = {m for m, b in config.models.items() if b.error or b.stream_error}
    # One bare id of a profile-only model: Bedrock refuses it on demand, with a hint
    # to use the profile id. The last such model in the defaults is the one meant for it.
    bare = [m[len(p):] for m in models for p in GEO_PREFIXES
            if m.startswith(p) and m[len(p):] not in config.models]
    if bare:
        models.append(bare[-1])
        failing.add(bare[-1])
    return models, failing


def runner_env(ingest_url: str, key: str, state_dir: Path, simulator_url: str | None,
               region: str | None) -> dict[str, str]:
    """The environment of `bench-runner once`: the demo's ingest app and outbox."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INGEST_", "BENCHMARK_", "BENCH_RUNNER_"))}
    env.update(INGEST_API_URL=f"{ingest_url}/ingest", INGEST_API_KEY=key,
               BENCH_RUNNER_STATE_DIR=str(state_dir))
    if simulator_url:
        # Keep every real AWS setting out: boto3 talks to the simulator only.
        env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL_BEDROCK_RUNTIME=simulator_url,
            AWS_ENDPOINT_URL_BEDROCK=simulator_url,
            # The simulator checks no signature; boto3 only needs something to sign with.
            AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo",  # noqa: S106
            AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
    elif region:
        env.update(AWS_REGION=region, AWS_DEFAULT_REGION=region)
    return env


def measure_other_providers(services: Services, env: dict[str, str]) -> list[str]:
    """One model of each other provider, each on its own simulator; the models measured."""
    measured = []
    for other in OTHER_PROVIDERS:
        url = start_simulator(services, other.protocol)
        print(f"simulator       {url}  ({other.protocol})")
        print(f"\n== bench-runner once --provider {other.provider} --models {other.model} ==",
              flush=True)
        run = subprocess.run(  # noqa: S603 - argv built here
            [executable("bench-runner"), "once", "--provider", other.provider,
             "--models", other.model],
            env={**env, **other.env(url)}, cwd=REPO, stdin=subprocess.DEVNULL, check=False,
            timeout=600)
        print(f"bench-runner exit code: {run.returncode}")
        measured.append(other.model)
    return measured


def shown(value: Any) -> Any:
    """A stored value as the demo prints it: dates with their BSON type made visible."""
    if isinstance(value, datetime):
        return f"{value.isoformat()} (BSON date)"
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    return value


def dashboard_line(doc: dict[str, Any]) -> str:
    """One stored result's schema v2 figures, as the dashboard reads them."""
    reached = doc.get("time_to_64_visible_tokens_seconds")
    delivered = f"{64 / reached:7.1f} tok/s" if reached else "   none (under 64 visible)"
    return (f"{doc['provider']:<9} {doc['model_name']:<24} "
            f"{doc.get('benchmark_profile_id', '-'):<18} "
            f"{doc.get('sample_role', 'published'):<9} "
            f"tokens {doc.get('generated_output_tokens')}/{doc.get('visible_output_tokens')}/"
            f"{doc.get('reasoning_tokens') or 0}  "
            f"visible {doc.get('visible_tokens_per_second') or 0:6.1f} tok/s  "
            f"time to 64 {reached if reached is None else round(reached, 3)}  "
            f"delivered {delivered}")


def outbox_files(state_dir: Path, folder: str) -> list[Path]:
    """Record files in one outbox folder (sidecars excluded)."""
    directory = state_dir / "outbox" / folder
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if not p.name.endswith(".reason.json")]


def report(mongo_uri: str, models: list[str], failing: set[str], state_dir: Path) -> bool:
    """Print what landed; True when every model ended as exactly one stored record."""
    with pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        db = client[DB_NAME]
        results = list(db[RESULTS].find({}, {"_id": 0}).sort("run_ts", 1))
        errors = list(db[ERRORS].find({}, {"_id": 0}).sort("ts", 1))
    print(f"\n== what landed in MongoDB ({DB_NAME}) ==")
    print(f"{RESULTS}: {len(results)} documents   {ERRORS}: {len(errors)} documents")
    if results:
        print(f"\none stored result ({results[0]['model_name']}):")
        print(json.dumps(shown(results[0]), indent=2, default=str))
        print("\nthe dashboard's fields (tokens: generated / visible / reasoning; "
              "Delivered TPS = 64 / time to 64 visible tokens):")
        for doc in results:
            print("  " + dashboard_line(doc))
    if errors:
        print("\nfailure records:")
        for doc in errors:
            print(f"  {doc['model_name']}: {doc['error_kind']} at stage {doc['stage']}"
                  f" (attempts {doc.get('attempts', 1)}): {doc['message'][:160]}")

    pending, dead = outbox_files(state_dir, "pending"), outbox_files(state_dir, "dead")
    print(f"\noutbox: {len(pending)} pending, {len(dead)} dead ({state_dir / 'outbox'})")

    problems = []
    for model in models:
        stored_results = sum(1 for d in results if d["model_name"] == model)
        stored_errors = sum(1 for d in errors if d["model_name"] == model)
        if stored_results + stored_errors != 1:
            problems.append(f"{model}: {stored_results} results and {stored_errors} failures "
                            "stored, expected exactly one record")
        elif model in failing and not stored_errors:
            problems.append(f"{model} was meant to fail but a result was stored")
        elif failing and model not in failing and not stored_results:
            problems.append(f"{model} was meant to succeed but only a failure was stored")
    if pending or dead:
        problems.append(f"{len(pending)} pending and {len(dead)} dead records in the outbox")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return not problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The demo's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the services running until Ctrl-C (to browse the status page)")
    parser.add_argument("--real-bedrock", action="store_true",
                        help="measure real Bedrock with your AWS credentials instead of the "
                             "simulator (costs money; needs --models or BENCHMARK_MODELS)")
    parser.add_argument("--models", default=None,
                        help="comma-separated model ids (default: the simulator's models; "
                             "with --real-bedrock, BENCHMARK_MODELS)")
    parser.add_argument("--region", default=None, help="AWS region for --real-bedrock")
    parser.add_argument("--workdir", type=Path, default=REPO / ".demo",
                        help="where the database, the outbox and the logs go")
    return parser.parse_args(argv)


def demo_models(args: argparse.Namespace) -> tuple[list[str], set[str]]:
    """The models to measure and those meant to fail; says aloud what a shell's
    BENCHMARK_MODELS did, since a leftover one would change the run unseen."""
    shell = os.environ.get("BENCHMARK_MODELS", "").strip()
    chosen = args.models
    if args.real_bedrock:
        if chosen is None and shell:
            print(f"demo: using BENCHMARK_MODELS from your shell: {shell}", file=sys.stderr)
            chosen = shell
        return [m.strip() for m in (chosen or "").split(",") if m.strip()], set()
    if chosen is None and shell:
        print(f"demo: BENCHMARK_MODELS={shell} in your shell is ignored: the demo measures "
              f"the simulator's own models (pass --models to choose)", file=sys.stderr)
    models, failing = simulated_models()
    if chosen:
        models = [m.strip() for m in chosen.split(",") if m.strip()]
    return models, failing


def main(argv: list[str] | None = None) -> int:
    """Run the demo; the exit status says whether the pipeline behaved as designed."""
    args = parse_args(argv)
    workdir = args.workdir.resolve()
    # Fresh data each time, so the counts shown are this run's. Only what the demo
    # itself makes is removed, whatever directory it was pointed at.
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("mongo", "runner-state"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in ("mongo.log", "ingest.log", *SIMULATOR_LOGS.values()):
        (workdir / name).unlink(missing_ok=True)
    state_dir = workdir / "runner-state"
    key = secrets.token_urlsafe(32)
    services = Services(workdir)

    models, failing = demo_models(args)
    if not models:
        print("--real-bedrock needs --models (or BENCHMARK_MODELS)", file=sys.stderr)
        return 2

    ok = False
    with terminated_as_interrupt():
        try:
            print(f"== starting the services (logs under {workdir}) ==")
            mongo_uri = start_mongo(services, workdir)
            print(f"nx-27017        {mongo_uri}  (data: {workdir / 'mongo'})")
            ingest_url = start_ingest(services, mongo_uri, key)
            print(f"ingest app      {ingest_url}  (gunicorn, key {RUNNER_NAME}:<generated>)")
            simulator_url = None
            if not args.real_bedrock:
                simulator_url = start_simulator(services)
                print(f"simulator       {simulator_url}  (Bedrock runtime and control plane)")

            list_models(ingest_env(mongo_uri, key), [("bedrock", m) for m in models] + (
                [] if args.real_bedrock else [(o.provider, o.model) for o in OTHER_PROVIDERS]))
            print(f"\n== bench-runner once --models {','.join(models)} ==", flush=True)
            env = runner_env(ingest_url, key, state_dir, simulator_url, args.region)
            run = subprocess.run(  # noqa: S603 - argv built here
                [executable("bench-runner"), "once", "--models", ",".join(models)],
                env=env, cwd=REPO, stdin=subprocess.DEVNULL, check=False, timeout=600)
            print(f"bench-runner exit code: {run.returncode}"
                  + (" (a model failed, as the simulator's defaults intend)"
                     if run.returncode and failing else ""))
            if not args.real_bedrock:
                models += measure_other_providers(services, env)

            ok = report(mongo_uri, models, failing, state_dir)
            status_page = f"{ingest_url}/"
            code = http_status(status_page)
            print(f"\nstatus page: {status_page} (HTTP {code})"
                  + ("" if args.keep else "; up while the demo runs: --keep leaves it up"))
            if args.keep:
                print("services left running; Ctrl-C stops them")
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the services")
            ok = ok and args.keep
        except (DemoError, subprocess.TimeoutExpired) as error:
            print(f"\ndemo failed: {error}", file=sys.stderr)
            ok = False
        finally:
            services.stop_all()
            print("services stopped")
    print("\ndemo: OK, the pipeline behaved as designed" if ok else "\ndemo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
