"""How far the runner's figures are from the truth, measured against the Bedrock simulator.

Starts the simulator in its own process, measures its models many times with the
real BedrockProvider (sequentially, then four at a time from threads as
`--concurrency 4` does), and prints the median and max error of TTFT, generate
time and decode speed twice: against the simulator's planned schedule, and
against when the simulator actually sent each delta (on a busy machine the
simulator itself runs late; the second table is the runner's own error).

    python bench/measurement_fidelity.py [--runs 32]

Then the dashboard's visible-token fields, on models of 300-token answers in deltas
of varied token counts (some after reasoning), under a 512-token profile: the error
of time_to_64_visible_tokens_seconds against when the simulator sent the delta that
carried the 64th cl100k_base token, and of visible_output_tokens and reasoning_tokens
against the simulator's count.

Then the same for the anthropic provider, with the real `anthropic` client against the
Anthropic simulator (its own process): TTFT against the plan and as sent, and time to
64 visible tokens, with and without a thinking block first.

Target: median TTFT error under 5 ms, max under 25 ms; time to 64 visible tokens
within 25 ms; token counts exact.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.records import Profile, Result  # noqa: E402
from runner.simulator import ModelBehaviour, SimulatorConfig  # noqa: E402
from tests.support.mongo import free_port, wait_for_port  # noqa: E402

PROFILE = Profile(max_tokens=64)
MODELS = {
    "sim.fid-a": ModelBehaviour(ttft=0.10, gap=0.010, tokens_per_delta=1, output_tokens=48),
    "sim.fid-b": ModelBehaviour(ttft=0.20, gap=0.020, tokens_per_delta=4, output_tokens=64),
    "sim.fid-c": ModelBehaviour(ttft=0.30, gap=0.015, tokens_per_delta=2, output_tokens=40,
                                empty_first_delta=True),
    "us.sim.fid-r": ModelBehaviour(ttft=0.15, gap=0.020, tokens_per_delta=4,
                                   reasoning_tokens=16, output_tokens=32),
}
# Cross the 64th visible token at different deltas, with and without reasoning first.
VISIBLE_PROFILE = Profile(max_tokens=512, profile_id="cloud-long-v1")
VISIBLE_MODELS = {
    "sim.fid-v1": ModelBehaviour(ttft=0.10, gap=0.008, delta_tokens=(1, 3, 2, 7, 4),
                                 output_tokens=300),
    "sim.fid-v2": ModelBehaviour(ttft=0.15, gap=0.012, delta_tokens=(5, 1, 9, 2),
                                 output_tokens=300, send_usage=False),
    "us.sim.fid-vr": ModelBehaviour(ttft=0.12, gap=0.010, delta_tokens=(2, 6, 1, 3),
                                    reasoning_tokens=90, output_tokens=300),
}


def _visible_errors(config: SimulatorConfig, results: list[tuple[str, Result]],
                    late: dict[str, dict[str, float]]) -> dict[str, list[float]]:
    """Errors of the visible-token fields: time to 64 (ms, against the plan and as sent)."""
    out: dict[str, list[float]] = {"t64_plan_ms": [], "t64_sent_ms": [], "visible_tok": [],
                                   "reasoning_tok": []}
    for model_id, r in results:
        plan = config.plan(model_id, VISIBLE_PROFILE.max_tokens)
        truth = plan.time_to_64_visible_tokens
        measured = r.time_to_64_visible_tokens_seconds
        if truth is None or measured is None:
            raise SystemExit(f"{model_id}: time to 64 visible tokens missing "
                             f"(truth {truth}, measured {measured})")
        out["t64_plan_ms"].append(abs(measured - truth) * 1000)
        out["t64_sent_ms"].append(abs(measured - truth - late[r.request_id]["visible_64"])
                                  * 1000)
        expected = plan.output_tokens if r.token_source == "provider_usage" and \
            plan.reasoning_tokens is None else plan.visible_output_tokens
        out["visible_tok"].append(abs(r.visible_output_tokens - expected))
        out["reasoning_tok"].append(abs((r.reasoning_tokens or 0) - (plan.reasoning_tokens or 0)))
    return out


def _errors(config: SimulatorConfig, results: list[tuple[str, Result]],
            late: dict[str, dict[str, float]] | None = None) -> dict[str, list]:
    """Absolute errors against the plan, shifted by the simulator's lateness when given."""
    out: dict[str, list[float]] = {"ttft_ms": [], "gen_ms": [], "decode_pct": []}
    for model_id, r in results:
        plan = config.plan(model_id, PROFILE.max_tokens)
        shift = late[r.request_id] if late else {"first_text": 0, "first_any": 0, "last": 0,
                                                 "end": 0}
        ttft = plan.time_to_first_token + shift["first_text"]
        gen = plan.generate_time + shift["end"]
        span = plan.deltas[-1].at - plan.deltas[0].at + shift["last"] - shift["first_any"]
        decode = (plan.output_tokens - plan.deltas[0].tokens) / span
        out["ttft_ms"].append(abs(r.time_to_first_token - ttft) * 1000)
        out["gen_ms"].append(abs(r.generate_time - gen) * 1000)
        out["decode_pct"].append(abs(r.decode_tokens_per_second - decode) / decode * 100)
    return out


def _lateness(url: str) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(f"{url}/_simulator/stats", timeout=10) as answer:
        return json.load(answer)["streams"]


def _measure(provider, model_ids: list[str], threads: int,
             profile: Profile = PROFILE) -> list[tuple[str, Result]]:
    def one(model_id: str) -> tuple[str, Result]:
        outcome = provider.measure(model_id, profile)
        if not isinstance(outcome, Result):
            raise SystemExit(f"{model_id} failed: {outcome.error_kind}: {outcome.message}")
        return model_id, outcome

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, model_ids))


def _report(label: str, errors: dict[str, list[float]]) -> None:
    units = {"ttft_ms": "ms", "gen_ms": "ms", "decode_pct": "%", "t64_plan_ms": "ms",
             "t64_sent_ms": "ms", "visible_tok": "tk", "reasoning_tok": "tk"}
    names = {"ttft_ms": "TTFT", "gen_ms": "generate time", "decode_pct": "decode speed",
             "t64_plan_ms": "t64 vs plan", "t64_sent_ms": "t64 vs sent",
             "visible_tok": "visible tokens", "reasoning_tok": "reasoning tok"}
    for key, values in errors.items():
        print(f"{label:<24} {names[key]:<14} median {statistics.median(values):6.2f} "
              f"{units[key]:<2}  max {max(values):6.2f} {units[key]:<2}  (n={len(values)})")


def main() -> None:
    """Run the sequential and concurrent passes and print the error figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=32, help="measurements per pass")
    args = parser.parse_args()

    config = SimulatorConfig(models={**MODELS, **VISIBLE_MODELS})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sim.json"
        path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
        sim = subprocess.Popen([sys.executable, "-m", "runner.simulator", str(port), str(path)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port("127.0.0.1", port)
            for name in [n for n in os.environ if n.startswith("AWS_")]:
                del os.environ[name]
            os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                              AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                              AWS_ENDPOINT_URL_BEDROCK_RUNTIME=url)
            from runner.bedrock import BedrockProvider

            ids = [list(MODELS)[i % len(MODELS)] for i in range(args.runs)]
            for label, threads in (("sequential", 1), ("4 concurrent threads", 4)):
                provider = BedrockProvider(region=None, concurrency=threads)
                try:
                    provider.warm()
                    started = time.perf_counter()
                    results = _measure(provider, ids, threads)
                    wall = time.perf_counter() - started
                finally:
                    provider.close()
                late = _lateness(url)
                worst = max(late[r.request_id]["max"] for _, r in results) * 1000
                print(f"{label}: {len(results)} measurements in {wall:.1f} s; the simulator "
                      f"sent a delta up to {worst:.1f} ms late")
                _report("  against the plan", _errors(config, results))
                _report("  against what was sent", _errors(config, results, late))
            visible_ids = [list(VISIBLE_MODELS)[i % len(VISIBLE_MODELS)]
                           for i in range(args.runs)]
            for label, threads in (("visible, sequential", 1), ("visible, 4 threads", 4)):
                provider = BedrockProvider(region=None, concurrency=threads)
                try:
                    provider.warm()
                    results = _measure(provider, visible_ids, threads, VISIBLE_PROFILE)
                finally:
                    provider.close()
                print(f"{label}: {len(results)} measurements of 300 visible tokens")
                _report("  visible-token fields", _visible_errors(config, results,
                                                                  _lateness(url)))
        finally:
            sim.terminate()
            sim.wait(timeout=10)
    _anthropic(args.runs)
    print("target: median TTFT error < 5 ms, max < 25 ms; time to 64 visible tokens within "
          "25 ms; token counts exact (0 tk)")


ANTHROPIC_MODELS = {
    "claude-fid-a": dict(ttft=0.10, gap=0.010, tokens_per_delta=1, output_tokens=48),
    "claude-fid-b": dict(ttft=0.20, gap=0.020, tokens_per_delta=4, output_tokens=64),
    "claude-fid-t": dict(ttft=0.15, gap=0.020, tokens_per_delta=4, reasoning_tokens=16,
                         output_tokens=32),
}
ANTHROPIC_VISIBLE = {
    "claude-fid-v1": dict(ttft=0.10, gap=0.008, delta_tokens=(1, 3, 2, 7, 4), output_tokens=300),
    "claude-fid-vt": dict(ttft=0.12, gap=0.010, delta_tokens=(2, 6, 1, 3), reasoning_tokens=90,
                          output_tokens=300),
}


def _anthropic(runs: int) -> None:
    """The anthropic provider's TTFT error and time to 64 visible tokens, as for Bedrock."""
    from runner.anthropic_provider import AnthropicProvider
    from runner.anthropic_simulator import AnthropicSimulatorConfig
    from runner.sse_simulator import SSEBehaviour
    from tests.support.simulator import start_sse_simulator

    config = AnthropicSimulatorConfig(models={
        model_id: SSEBehaviour(**spec)
        for model_id, spec in {**ANTHROPIC_MODELS, **ANTHROPIC_VISIBLE}.items()})
    with tempfile.TemporaryDirectory() as tmp:
        sim = start_sse_simulator("runner.anthropic_simulator", config, Path(tmp))
        environ = {"ANTHROPIC_API_KEY": config.api_key, "ANTHROPIC_BASE_URL": sim.url}
        try:
            passes = (("anthropic, sequential", 1, ANTHROPIC_MODELS, PROFILE),
                      ("anthropic, 4 threads", 4, ANTHROPIC_MODELS, PROFILE),
                      ("anthropic visible, seq", 1, ANTHROPIC_VISIBLE, VISIBLE_PROFILE),
                      ("anthropic visible, 4 thr", 4, ANTHROPIC_VISIBLE, VISIBLE_PROFILE))
            for label, threads, models, profile in passes:
                provider = AnthropicProvider(concurrency=threads, environ=environ)
                try:
                    provider.warm()
                    ids = [list(models)[i % len(models)] for i in range(runs)]
                    results = _measure(provider, ids, threads, profile)
                finally:
                    provider.close()
                late = sim.stats()["streams"]
                worst = max(late[r.request_id]["max"] for _, r in results) * 1000
                print(f"{label}: {len(results)} measurements; the simulator sent a delta up "
                      f"to {worst:.1f} ms late")
                if profile is PROFILE:
                    _report("  against the plan", _errors(config, results))
                    _report("  against what was sent", _errors(config, results, late))
                else:
                    _report("  visible-token fields", _visible_errors(config, results, late))
        finally:
            sim.stop()


if __name__ == "__main__":
    main()
