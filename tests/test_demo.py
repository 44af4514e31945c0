"""The demo's choices, as a newcomer meets them (scripts/demo.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_script"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("demo_script", None)


def test_the_simulator_demo_ignores_models_set_in_the_shell_and_says_so(demo, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("BENCHMARK_MODELS", "anthropic.claude-3-haiku-20240307-v1:0")
    models, failing = demo.demo_models(demo.parse_args([]))
    assert models == demo.simulated_models()[0]
    assert failing
    err = capsys.readouterr().err
    assert "BENCHMARK_MODELS" in err and "ignored" in err


def test_models_given_on_the_command_line_are_the_ones_measured(demo, monkeypatch, capsys):
    monkeypatch.setenv("BENCHMARK_MODELS", "sim.other-v1")
    models, _failing = demo.demo_models(demo.parse_args(["--models", "sim.fast-v1"]))
    assert models == ["sim.fast-v1"]
    assert "BENCHMARK_MODELS" not in capsys.readouterr().err


def test_real_bedrock_uses_models_from_the_shell_and_says_so_loudly(demo, monkeypatch, capsys):
    monkeypatch.setenv("BENCHMARK_MODELS", "amazon.nova-micro-v1:0")
    models, failing = demo.demo_models(demo.parse_args(["--real-bedrock"]))
    assert models == ["amazon.nova-micro-v1:0"]
    assert failing == set()
    err = capsys.readouterr().err
    assert "BENCHMARK_MODELS" in err and "amazon.nova-micro-v1:0" in err


def test_each_other_provider_measures_a_model_its_simulator_serves_without_fault(demo):
    from runner.anthropic_simulator import AnthropicSimulatorConfig
    from runner.openai_simulator import OpenAISimulatorConfig
    from runner.provider import PROVIDER_CHOICES

    simulators = {"openai-compatible": OpenAISimulatorConfig.default(),
                  "anthropic": AnthropicSimulatorConfig.default()}
    assert {o.provider for o in demo.OTHER_PROVIDERS} == {"openai", "anthropic"}
    for other in demo.OTHER_PROVIDERS:
        assert other.provider in PROVIDER_CHOICES
        behaviour = simulators[other.protocol].models[other.model]
        assert behaviour.error is None and behaviour.stream_error is None
        env = other.env("http://127.0.0.1:1")
        if other.provider == "anthropic":
            # The key the simulator accepts, or the run would stop at its warm-up.
            assert env == {"ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
                           "ANTHROPIC_API_KEY": simulators["anthropic"].api_key}
        else:
            assert env["OPENAI_COMPATIBLE_BASE_URL"] == "http://127.0.0.1:1/v1"
