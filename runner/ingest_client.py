"""The ingest API's client: one requests.Session with urllib3 retries and explicit timeouts.

Every answer comes back as an Answer (status, parsed body, Retry-After); what to
do with it is the outbox's decision. POSTs may be retried inside a call because
every payload carries its own id: a resend is stored once (200 duplicate).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import socket
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError, InvalidHeader, MaxRetryError
from urllib3.util.retry import Retry

from . import __version__
from .payload import body as encode_body
from .settings import ENV_API_KEY, ENV_INGEST_URL, Settings

log = logging.getLogger(__name__)

# Statuses worth a quick retry inside one call: gateways and an overloaded or
# database-less API. 500 is a bug on the server: the outbox retries it a few times
# across drains, then dead-letters it.
INLINE_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# No answer of the API is near this size (a full batch's is about 30 KB): past it the
# rest is not read, so a hostile or broken server cannot fill the runner's memory.
MAX_ANSWER_BYTES = 1 << 20
_TITLE = re.compile(r"<title>\s*(.*?)\s*</title>", re.IGNORECASE | re.DOTALL)
# Answers that never change on a resend (docs/contract.md section 2).


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # `inf`, `nan` and `1e400` are not a time to wait: no Retry-After at all.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _BoundedRetry(Retry):
    """urllib3 Retry that sleeps for a short Retry-After but hands a long one back.

    A Retry-After longer than the cap returns the answer at once, so the outbox can
    schedule the next attempt and the run goes on instead of sleeping in a call.
    """

    max_inline_retry_after = 10.0

    def new(self, **kw: Any) -> _BoundedRetry:
        new = super().new(**kw)
        new.max_inline_retry_after = self.max_inline_retry_after
        return new

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        # urllib3 would also retry a 413 that carries Retry-After; a body too large stays so.
        if status_code not in INLINE_RETRY_STATUSES:
            return False
        return super().is_retry(method, status_code, has_retry_after)

    def get_retry_after(self, response: Any) -> float | None:
        # urllib3 raises on a Retry-After it cannot parse (`inf`, `1e400`): that is no
        # Retry-After, not a reason to lose the answer.
        try:
            wait = super().get_retry_after(response)
        except (InvalidHeader, OverflowError, ValueError):
            return None
        return wait if wait is None or math.isfinite(wait) else None

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                  _stacktrace=None):
        if response is not None:
            wait = self.get_retry_after(response)
            if wait is not None and wait > self.max_inline_retry_after:
                raise MaxRetryError(_pool, url, None)
        return super().increment(method, url, response, error, _pool, _stacktrace)


@dataclass(frozen=True)
class Answer:
    """What the ingest API said, or why it said nothing (status None)."""

    status: int | None
    body: Any = None
    retry_after: float | None = None
    error: str | None = None
    etag: str | None = None  # the answer's ETag (the worklist's)
    raw: bytes = b""  # the body as read, for an answer JSON did not parse

    @property
    def delivered(self) -> bool:
        """Stored now or stored before (201, or 200 duplicate)."""
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        """A short phrase for a log line or an outbox record."""
        if self.status is None:
            return f"no answer: {self.error}"
        message = ""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            message = str(self.body["error"].get("message", ""))
        elif isinstance(self.body, str) and (title := _TITLE.search(self.body[:2000])):
            # gunicorn's own HTML error page (docs/contract.md section 2): its title says
            # what it refused; the rest may quote the request, so it is not kept.
            message = title.group(1)[:200]
        text = f"HTTP {self.status}" + (f": {message}" if message else "")
        return text + (f" ({self.error})" if self.error else "")

    @property
    def hint(self) -> str | None:
        """Which of this runner's settings an answer points at, if any."""
        if self.status == 401:
            return f"check {ENV_API_KEY}"
        if self.status in (404, 405) or (self.status is not None and 300 <= self.status < 400):
            return f"is {ENV_INGEST_URL} the full URL of POST /ingest?"
        return None


class _Call:
    """The sockets of one POST in flight, so that its deadline ends it whatever it waits on.

    A read timeout bounds each wait for a byte, not the whole answer: a server that
    drips its status line and headers a byte at a time would hold a call for as
    long as it likes. At the deadline the call's sockets are shut down, which ends
    any read blocked on them at once.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.expired = False

    def track(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self.lock:
            self.sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


_calls = threading.local()


class _Tracked:
    """Hands the socket of a sent request to the call in flight on this thread."""

    sock: socket.socket | None

    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)  # type: ignore[misc]  # connected and sent
        call = getattr(_calls, "current", None)
        if call is not None:
            call.track(self.sock)


class _TrackedHTTPConnection(_Tracked, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections a call's deadline can end (`_Call`)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        # On this manager only: the module-level mapping is shared by every PoolManager.
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool,
                                                   "https": _TrackedHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
        return manager


class IngestClient:
    """Posts results and failures to the ingest API."""

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        retry = _BoundedRetry(
            total=settings.http_retries,
            connect=settings.http_retries,
            read=0,  # a read timeout after sending may mean stored: let the outbox resend later
            status=settings.http_retries,
            other=0,
            allowed_methods=frozenset({"POST"}),
            status_forcelist=INLINE_RETRY_STATUSES,
            backoff_factor=0.5,
            backoff_jitter=0.5,
            backoff_max=8.0,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        retry.max_inline_retry_after = settings.max_inline_retry_after
        adapter = _DeadlineAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({
            "X-API-Key": settings.api_key,
            "Content-Type": "application/json",
            "User-Agent": f"bench-runner/{__version__}",
        })

    def post(self, url: str, payload: Any) -> Answer:
        """POST one JSON body; never raises for the network or the answer."""
        return self._within_deadline(lambda: self._post(url, encode_body(payload)))

    def get(self, url: str, headers: dict[str, str] | None = None) -> Answer:
        """GET `url` (the worklist), under the same deadline and bounds as a POST."""
        return self._within_deadline(lambda: self._post(url, None, headers))

    def _within_deadline(self, send: Any) -> Answer:
        call = _Call()
        _calls.current = call
        watchdog = threading.Timer(self.settings.http_deadline, call.expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            return send()
        finally:
            watchdog.cancel()
            _calls.current = None

    def _post(self, url: str, body: bytes | None,
              headers: dict[str, str] | None = None) -> Answer:
        """POST `body`, or GET when it is None."""
        deadline = time.monotonic() + self.settings.http_deadline
        connect, read = self.settings.http_timeout
        timeout = (connect, min(read, self.settings.http_deadline))
        try:
            # Never follow a redirect: the key would go along to wherever it points. The
            # answer is streamed so that its size and its time can be bounded.
            if body is None:
                response = self.session.get(url, headers=headers, allow_redirects=False,
                                            stream=True, timeout=timeout)
            else:
                response = self.session.post(url, data=body, allow_redirects=False,
                                             stream=True, timeout=timeout)
        except requests.RequestException as exc:
            if time.monotonic() >= deadline:
                log.warning("ingest answer past the deadline url=%s", url)
                return Answer(status=None, error=self._past_deadline())
            log.warning("ingest unreachable url=%s error=%s", url, type(exc).__name__)
            return Answer(status=None, error=f"{type(exc).__name__}: {_first_line(exc)}")
        try:
            raw, problem = read_bounded(response, deadline, self.settings.http_deadline)
        finally:
            response.close()
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if problem == "deadline":
            # Part of an answer is no answer: whether it was stored is unknown, so the
            # record waits and is resent (a duplicate is answered 200).
            answer = Answer(status=None, error=self._past_deadline())
        elif problem:
            answer = Answer(status=response.status_code, retry_after=retry_after,
                            error=problem)
        else:
            parsed: Any
            try:
                parsed = json.loads(raw)
            except (ValueError, RecursionError):
                parsed = raw[:2000].decode("utf-8", "replace")
            answer = Answer(status=response.status_code, body=parsed, retry_after=retry_after,
                            etag=response.headers.get("ETag"), raw=raw)
        log.info("ingest answer url=%s status=%s bytes=%d", url, answer.status,
                 len(body or b""))
        return answer

    def _past_deadline(self) -> str:
        return f"the answer took longer than the {self.settings.http_deadline:g} s deadline"

    def post_result(self, payload: dict[str, Any]) -> Answer:
        """POST one result to /ingest."""
        return self.post(self.settings.ingest_url, payload)

    def post_batch(self, payloads: list[dict[str, Any]]) -> Answer:
        """POST results to /ingest/batch (at most the contract's batch size)."""
        return self.post(self.settings.batch_url, {"results": payloads})

    def post_error(self, payload: dict[str, Any]) -> Answer:
        """POST one failure to /ingest/error."""
        return self.post(self.settings.error_url, payload)

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_bounded(response: requests.Response, deadline: float,
                  seconds: float) -> tuple[bytes, str | None]:
    """The answer's body, or why it was not read whole: too large, or past the deadline."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        return b"", f"answer over {MAX_ANSWER_BYTES} bytes, not read"
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            if time.monotonic() > deadline:
                return b"", "deadline"
            # read1 returns what has arrived, so a trickle is checked against the deadline
            # byte by byte instead of blocking until a whole chunk is in.
            chunk = response.raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                return b"", f"answer over {MAX_ANSWER_BYTES} bytes, not read"
            chunks.append(chunk)
    except (requests.RequestException, OSError, HTTPError) as exc:
        if time.monotonic() > deadline:
            return b"", "deadline"
        return b"", f"answer cut off: {type(exc).__name__}"
    if time.monotonic() > deadline:
        return b"", "deadline"
    return b"".join(chunks), None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]
