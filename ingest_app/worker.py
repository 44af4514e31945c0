"""The gunicorn worker: gthread, with every request bounded in time as a whole.

gunicorn's gthread worker hands a connection to a thread as soon as its first
byte arrives, and each socket read then has no time limit of its own: sixteen
clients sending their headers one byte at a time held every thread, so /health
and /ready stopped answering, and a body dripped under the per-read timeout was
read for as long as the client liked. Here (docs/reliability.md, slow clients):

- the request line and headers are gathered by the worker's event loop, without
  a thread; only a connection whose headers are complete takes one;
- the whole request, headers and body, must arrive within
  INGEST_REQUEST_TIMEOUT_SECONDS of its first byte; a connection still sending
  its headers then gets a 408 in the JSON error shape, one still sending its body
  the app's 400 incomplete_body.

A reverse proxy in front must still buffer requests and bound them itself: this
bounds what one worker spends, not how many connections a host accepts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import time
from functools import partial
from typing import Any

from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import TConn, ThreadWorker

from . import settings as app_settings

# Past this many bytes without the end of the headers, the thread's parser takes over
# and answers gunicorn's own 431 or 400: no request of ours has headers this long.
MAX_HEAD_BYTES = 64 * 1024


class RequestDeadline(NoMoreData):
    """The request did not arrive whole in time (read as a client gone, never a traceback)."""

    def __init__(self) -> None:
        super().__init__(b"")

    def __str__(self) -> str:
        return "the request did not arrive whole in time"


class DeadlineSocket:
    """A client socket whose reads all end by one deadline (reset for each request)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.deadline = float("inf")
        # The timeout the caller asked for (None: blocking, 0.0: non-blocking).
        self._timeout: float | None = sock.gettimeout()

    def settimeout(self, value: float | None) -> None:
        """Set the caller's own per-read timeout."""
        self._timeout = value
        self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        """The caller's own per-read timeout."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """Blocking (no per-read timeout) or non-blocking."""
        self.settimeout(None if flag else 0.0)

    def recv(self, size: int, *flags: int) -> bytes:
        """Read, waiting no later than the deadline (RequestDeadline past it)."""
        if self._timeout == 0.0:
            return self._sock.recv(size, *flags)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestDeadline()
        wait = left if self._timeout is None else min(left, self._timeout)
        self._sock.settimeout(wait)
        try:
            return self._sock.recv(size, *flags)
        except TimeoutError:
            if self.deadline - time.monotonic() <= 0:
                raise RequestDeadline() from None
            raise
        finally:
            self._sock.settimeout(self._timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _timeout_answer(seconds: float) -> bytes:
    body = json.dumps({"error": {
        "code": "request_timeout",
        "message": f"The request did not arrive whole within {seconds:g} s; send it again.",
        "details": {"limit_seconds": seconds},
        "request_id": "",
    }}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


class BoundedThreadWorker(ThreadWorker):
    """gthread with header gathering in the event loop and a whole-request deadline."""

    def init_process(self) -> None:
        """Start with no connection gathering its headers."""
        self.gathering: dict[TConn, float] = {}
        super().init_process()

    def request_timeout(self) -> float:
        """The app's INGEST_REQUEST_TIMEOUT_SECONDS (another app under this worker: the default)."""
        app = self.wsgi
        extensions = getattr(app, "extensions", {})
        cfg = extensions.get(app_settings.EXTENSION)
        return cfg.request_timeout_seconds if cfg else app_settings.Settings.request_timeout_seconds

    def accept(self, listener: Any) -> None:
        """Accept a connection and gather its headers without a thread."""
        if self.cfg.is_ssl:
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.sock = DeadlineSocket(conn.sock)
        self._gather(conn)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection starts its next request: gather its headers too."""
        if not isinstance(conn.sock, DeadlineSocket):
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._gather(conn)

    def _gather(self, conn: TConn) -> None:
        conn.sock.deadline = time.monotonic() + self.request_timeout()
        conn.sock.setblocking(False)
        conn.head = b""
        self.gathering[conn] = conn.sock.deadline
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_bytes, conn))

    def _on_head_bytes(self, conn: TConn, client: Any) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its headers were complete
            self._stop_gathering(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.head += data
        if b"\r\n\r\n" in conn.head or len(conn.head) > MAX_HEAD_BYTES:
            self._stop_gathering(conn)
            conn.data_ready = True
            self.enqueue_req(conn)

    def _stop_gathering(self, conn: TConn) -> None:
        self.gathering.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def handle(self, conn: TConn) -> Any:
        """Give the parser the headers gathered so far, then handle the request as gthread does."""
        head = getattr(conn, "head", b"")
        if head:
            conn.head = b""
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(head)
        return super().handle(conn)

    def murder_pending(self) -> None:
        """Also answer 408 to connections whose headers did not arrive in time.

        A stopping worker also closes the connections that have sent nothing yet, as
        gthread closes its idle kept-alive ones: they hold no request, and waiting for
        them kept every stop (a deploy, a restart) for the whole graceful timeout.
        """
        super().murder_pending()
        now = time.monotonic()
        for conn in [conn for conn in self.gathering if not self.alive and not conn.head]:
            self._stop_gathering(conn)
            self.nr_conns -= 1
            conn.close()
        late = [conn for conn, deadline in self.gathering.items() if deadline <= now]
        for conn in late:
            self._stop_gathering(conn)
            with contextlib.suppress(OSError):
                conn.sock.send(_timeout_answer(self.request_timeout()))
            self.nr_conns -= 1
            conn.close()
