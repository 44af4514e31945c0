"""How far the runner's figures are from the truth, measured against each provider's simulator.

For each provider (Bedrock with boto3, OpenAI-compatible with the openai client,
then Anthropic with the anthropic client, on the same models), starts its simulator
in its own process, measures its models many times with the real provider
(sequentially, then four at a time from threads as `--concurrency 4` does), and
prints the median and max error of TTFT, generate time and decode speed twice:
against the simulator's planned schedule, and against when the simulator actually
sent each delta (on a busy machine the simulator itself runs late; the second
table is the runner's own error).

    python bench/measurement_fidelity.py [--runs 32] [--providers bedrock,anthropic]

Then the dashboard's visible-token fields, on models of 300-token answers in deltas
of varied token counts (some after reasoning), under a 512-token profile: the error
of time_to_64_visible_tokens_seconds against when the simulator sent the delta that
carried the 64th cl100k_base token, and of visible_output_tokens and reasoning_tokens
against the simulator's count.

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


def _passes(provider_factory, config, url: str, runs: int) -> None:
    """The four passes (timing, then visible tokens; each sequential and 4 at a time)."""
    ids = [list(MODELS)[i % len(MODELS)] for i in range(runs)]
    for label, threads in (("sequential", 1), ("4 concurrent threads", 4)):
        provider = provider_factory(threads)
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
    visible_ids = [list(VISIBLE_MODELS)[i % len(VISIBLE_MODELS)] for i in range(runs)]
    for label, threads in (("visible, sequential", 1), ("visible, 4 threads", 4)):
        provider = provider_factory(threads)
        try:
            provider.warm()
            results = _measure(provider, visible_ids, threads, VISIBLE_PROFILE)
        finally:
            provider.close()
        print(f"{label}: {len(results)} measurements of 300 visible tokens")
        _report("  visible-token fields", _visible_errors(config, results, _lateness(url)))


def _start(module: str, config) -> tuple[subprocess.Popen, str, tempfile.TemporaryDirectory]:
    """A simulator process (`python -m module PORT CONFIG`) for `config`, listening."""
    port = free_port()
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "sim.json"
    path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    sim = subprocess.Popen([sys.executable, "-m", module, str(port), str(path)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port)
    return sim, f"http://127.0.0.1:{port}", tmp


def _bedrock(runs: int) -> None:
    config = SimulatorConfig(models={**MODELS, **VISIBLE_MODELS})
    sim, url, tmp = _start("runner.simulator", config)
    try:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                          AWS_ENDPOINT_URL_BEDROCK_RUNTIME=url)
        from runner.bedrock import BedrockProvider

        _passes(lambda threads: BedrockProvider(region=None, concurrency=threads), config, url,
                runs)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        tmp.cleanup()


def _openai_compatible(runs: int) -> None:
    """The same models on the OpenAI-compatible simulator, through the real openai client."""
    from runner.openai_compat import OpenAICompatibleProvider
    from runner.openai_endpoints import resolve
    from runner.openai_simulator import OpenAISimulatorConfig
    from runner.sse_simulator import SSEBehaviour

    def sse(b: ModelBehaviour, **options) -> SSEBehaviour:
        return SSEBehaviour(ttft=b.ttft, gap=b.gap, tokens_per_delta=b.tokens_per_delta,
                            delta_tokens=b.delta_tokens, output_tokens=b.output_tokens,
                            reasoning_tokens=b.reasoning_tokens, send_usage=b.send_usage,
                            options=options)

    models = {m: sse(b) for m, b in MODELS.items()}
    models["us.sim.fid-r"] = sse(MODELS["us.sim.fid-r"], reasoning_field="reasoning")
    models.update({m: sse(b) for m, b in VISIBLE_MODELS.items()})
    config = OpenAISimulatorConfig(models=models)
    sim, url, tmp = _start("runner.openai_simulator", config)
    try:
        endpoint = resolve("openai-compatible", {
            "OPENAI_COMPATIBLE_BASE_URL": f"{url}/v1",
            "OPENAI_COMPATIBLE_PROVIDER_NAME": "vllm"})
        _passes(lambda threads: OpenAICompatibleProvider(endpoint, concurrency=threads),
                config, url, runs)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        tmp.cleanup()


def _anthropic(runs: int) -> None:
    """The same models on the Anthropic simulator (thinking blocks for the reasoning ones),
    through the real anthropic client."""
    from runner.anthropic_provider import AnthropicProvider
    from runner.anthropic_simulator import AnthropicSimulatorConfig
    from runner.sse_simulator import SSEBehaviour

    config = AnthropicSimulatorConfig(models={
        m: SSEBehaviour(ttft=b.ttft, gap=b.gap, tokens_per_delta=b.tokens_per_delta,
                        delta_tokens=b.delta_tokens, output_tokens=b.output_tokens,
                        reasoning_tokens=b.reasoning_tokens, send_usage=b.send_usage)
        for m, b in {**MODELS, **VISIBLE_MODELS}.items()})
    sim, url, tmp = _start("runner.anthropic_simulator", config)
    environ = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": config.api_key}
    try:
        _passes(lambda threads: AnthropicProvider(concurrency=threads, environ=environ),
                config, url, runs)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        tmp.cleanup()


PROVIDERS = {"bedrock": _bedrock, "openai-compatible": _openai_compatible,
             "anthropic": _anthropic}


def main() -> None:
    """Run each provider's passes and print the error figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=32, help="measurements per pass")
    parser.add_argument("--providers", default=",".join(PROVIDERS),
                        help=f"comma-separated, of {', '.join(PROVIDERS)}")
    args = parser.parse_args()
    for name in args.providers.split(","):
        if name not in PROVIDERS:
            raise SystemExit(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}")
        print(f"== {name} ==")
        PROVIDERS[name](args.runs)
    print("target: median TTFT error < 5 ms, max < 25 ms; time to 64 visible tokens within "
          "25 ms; token counts exact (0 tk)")


if __name__ == "__main__":
    main()
