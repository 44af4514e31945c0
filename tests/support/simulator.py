"""Test fixtures for the simulator side (registered in tests/conftest.py).

`bedrock_sim(config)` starts the Bedrock simulator in its own process on a free
port (its own interpreter, so its timing does not share a GIL with the client
being measured) and points boto3 at it through the standard endpoint variables.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runner.simulator import SimulatorConfig
from tests.support.mongo import free_port, wait_for_port


@dataclass
class SimulatorHandle:
    """A running simulator: its URL, the env vars that point boto3 at it, and its config."""

    url: str
    env: dict[str, str]
    config: SimulatorConfig
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    def stats(self) -> dict[str, Any]:
        """Calls per model and connections that carried Bedrock requests."""
        with urllib.request.urlopen(f"{self.url}/_simulator/stats", timeout=5) as answer:
            return json.load(answer)

    def requests(self, model_id: str) -> list[dict[str, Any]]:
        """What each runtime call of `model_id` asked: region, inferenceConfig, extra fields."""
        return [r for r in self.stats()["requests"] if r["model"] == model_id]

    def calls(self, model_id: str) -> int:
        """How many runtime calls `model_id` received."""
        return self.stats()["calls"].get(model_id, 0)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL if it lingers)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_simulator(config: Any, config_dir: Path,
                    module: str = "runner.simulator") -> SimulatorHandle:
    """Start a simulator process (`python -m <module> PORT CONFIG`) for `config` and wait
    until it accepts connections; the Bedrock one's handle has boto3's endpoint variables."""
    config_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = config_dir / f"simulator-{port}.json"
    path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    log_path = config_dir / f"simulator-{port}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(port), str(path)],
        stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    env = ({"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": url, "AWS_ENDPOINT_URL_BEDROCK": url}
           if module == "runner.simulator" else {})
    handle = SimulatorHandle(url=url, env=env, config=config, log_path=log_path, proc=proc)
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        handle.stop()
        raise
    return handle


def simulator_factory(monkeypatch, tmp_path_factory, config_class: Any, module: str,
                      env_of: Callable[[SimulatorHandle], dict[str, str]],
                      unset: tuple[str, ...] = ()) -> Iterator[Callable[..., SimulatorHandle]]:
    """A fixture's body: yield `start(config=None)` (a config, a dict of one, or the
    default), which starts a simulator and sets `env_of(handle)` in the environment with
    `unset` removed; every simulator started is stopped after the test."""
    handles: list[SimulatorHandle] = []

    def start(config: Any = None) -> SimulatorHandle:
        if config is None:
            config = config_class.default()
        elif isinstance(config, dict):
            config = config_class.from_dict(config)
        handle = start_simulator(config, tmp_path_factory.mktemp(module.rsplit(".", 1)[1]),
                                 module)
        handles.append(handle)
        handle.env = env_of(handle)
        for name in unset:
            monkeypatch.delenv(name, raising=False)
        for name, value in handle.env.items():
            monkeypatch.setenv(name, value)
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture
def bedrock_sim(monkeypatch, tmp_path_factory):
    """Factory: `bedrock_sim(config=None)` starts a simulator and points boto3 at it."""
    yield from simulator_factory(monkeypatch, tmp_path_factory, SimulatorConfig,
                                 "runner.simulator", lambda handle: handle.env,
                                 unset=("AWS_BEARER_TOKEN_BEDROCK",))


OPENAI_TEST_KEY = "sk-test-" + "k3y" * 8  # shaped like a real key, so redaction is tested


@pytest.fixture
def openai_sim(monkeypatch, tmp_path_factory):
    """Factory: `openai_sim(config=None)` starts the OpenAI-compatible simulator and points
    the openai preset at it (OPENAI_COMPATIBLE_BASE_URL, and OPENAI_API_KEY set)."""
    from runner.openai_simulator import OpenAISimulatorConfig

    yield from simulator_factory(
        monkeypatch, tmp_path_factory, OpenAISimulatorConfig, "runner.openai_simulator",
        lambda handle: {"OPENAI_COMPATIBLE_BASE_URL": f"{handle.url}/v1",
                        "OPENAI_API_KEY": OPENAI_TEST_KEY},
        unset=("OPENAI_COMPATIBLE_API_KEY_ENV", "OPENAI_COMPATIBLE_PROVIDER_NAME"))


@pytest.fixture
def anthropic_sim(monkeypatch, tmp_path_factory):
    """Factory: `anthropic_sim(config=None)` starts the Anthropic simulator and points the
    anthropic provider at it (ANTHROPIC_BASE_URL, and ANTHROPIC_API_KEY set to its key)."""
    from runner.anthropic_simulator import AnthropicSimulatorConfig

    yield from simulator_factory(
        monkeypatch, tmp_path_factory, AnthropicSimulatorConfig, "runner.anthropic_simulator",
        lambda handle: {"ANTHROPIC_BASE_URL": handle.url,
                        "ANTHROPIC_API_KEY": handle.config.api_key})
