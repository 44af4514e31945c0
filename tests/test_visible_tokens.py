"""cl100k_base is loaded from the bundled copy, checked against tiktoken's hash, with no network."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from runner import visible_tokens
from runner.visible_tokens import EncodingUnavailable, VisibleTokenClock

REPO = Path(__file__).resolve().parents[1]


def test_the_pinned_hash_pattern_and_special_tokens_are_tiktokens_own():
    published = (resources.files("tiktoken_ext") / "openai_public.py").read_text()
    cl100k = published[published.index("def cl100k_base"):published.index("def o200k_base")]
    assert f'expected_hash="{visible_tokens.ENCODING_SHA256}"' in cl100k
    assert visible_tokens.PATTERN in cl100k
    for token, rank in visible_tokens.SPECIAL_TOKENS.items():
        assert f"{rank}" in cl100k and token in published


def test_known_texts_encode_to_cl100k_base_ids():
    encoding = visible_tokens.encoding()
    assert encoding.encode("hello world") == [15339, 1917]
    assert visible_tokens.count("") == 0
    # A special token's text inside an answer is counted as text, not refused.
    assert visible_tokens.count("<|endoftext|>") > 1


def test_the_encoding_loads_without_network_or_cache(tmp_path):
    script = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from runner import visible_tokens\n"
        "print(visible_tokens.count('Tell a long and happy story about the history of "
        "the world.'))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"),
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "13"
    assert not (tmp_path / "empty-cache").exists()


def test_a_file_with_another_hash_is_refused(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cl100k_base.tiktoken").write_bytes(b"IQ== 0\n")
    monkeypatch.setattr(visible_tokens.resources, "files", lambda _: tmp_path)
    with pytest.raises(EncodingUnavailable, match="sha256") as caught:
        visible_tokens.encoding_bytes()
    assert "reinstall" in str(caught.value)


def test_the_clock_counts_the_accumulated_text_so_merges_across_deltas_count_once():
    clock = VisibleTokenClock(sent=10.0)
    # " unbelievably" split in three deltas is fewer tokens than its parts encoded apart.
    parts = [" ", "u", "nbelievably"]
    for i, part in enumerate(parts):
        clock.visible(part, now=10.1 + i)
    assert clock.visible_tokens() == visible_tokens.count(" unbelievably") == 2
    assert clock.visible_tokens() < sum(visible_tokens.count(p) for p in parts)
    assert clock.time_to_mark is None


def test_the_clock_notes_the_delta_that_carries_the_64th_token_and_ignores_reasoning():
    clock = VisibleTokenClock(sent=1.0)
    clock.reasoning(" thinking" * 100)
    assert clock.time_to_mark is None and clock.reasoning_tokens() == 100
    for i in range(70):
        clock.visible(" word", now=2.0 + i)  # one token each
    assert clock.time_to_mark == pytest.approx(2.0 + 63 - 1.0)
    assert clock.visible_tokens() == 70
