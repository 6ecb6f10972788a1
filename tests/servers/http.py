"""HTTP plumbing the test servers share (standard library only).

``LocalServer`` runs a ``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread: start/stop (keep-alive
connections are shut down too), a context manager, ``url``, and the fault list (matched on the method and, with
``re.search``, the percent-decoded path without its query string). ``RequestHandler`` is the per-request side:
every method goes to one dispatch that takes a fault, routes, answers ``HttpError`` as JSON, resets the
connection on ``Dropped``, and records each request once, before its answer is sent (so a client that got the
answer finds it in the server's stats). Request bodies are read as they arrive, with Content-Length or chunked
transfer coding, all of them or only their first bytes.

A server subclass passes its handler class to ``LocalServer.__init__``; a handler subclass implements ``route``
and ``apply_fault``, and may override ``record``, ``on_request`` and ``answer_error``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar
from urllib.parse import unquote, urlsplit

__all__ = ["CHUNK", "Dropped", "HttpError", "LocalServer", "RequestHandler"]

CHUNK = 1 << 20
_S = TypeVar("_S", bound="LocalServer")  # a server's own class (typing.Self needs Python 3.11)


class HttpError(Exception):
    """An error answer: ``status`` and ``{"error": message}`` (a server may answer it in its own shape)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Dropped(Exception):
    """The connection is reset on purpose, without an answer (fault action "drop")."""


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 and a port chosen by the OS (or ``port``), serving ``handler``."""

    thread_name = "test-server"

    def __init__(self, handler: type[RequestHandler], port: int = 0):
        self._handler = handler
        self._port = port
        self._lock = threading.RLock()
        self._faults: list[dict] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self: _S) -> _S:
        server = ThreadingHTTPServer(("127.0.0.1", self._port), self._handler)
        server.daemon_threads = True
        server.owner = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:  # keep-alive connections: their handler threads would wait for a next request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------ faults
    def _add_fault(self, method: str | None, path: str, times: int | None, action, actions: tuple, **fields) -> dict:
        """Append a fault record (``fields`` are the server's own, e.g. status) and return it."""
        if action not in actions:
            raise ValueError(f"unknown fault action {action!r}")
        fault = {
            "method": method.upper() if method else None,
            "path": re.compile(path),
            "times": times,
            "action": action,
            **fields,
            "hits": 0,
        }
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> dict | None:
        with self._lock:
            for fault in self._faults:
                if fault["times"] is not None and fault["times"] <= 0:
                    continue
                if fault["method"] not in (None, method) or not fault["path"].search(path):
                    continue
                if fault["times"] is not None:
                    fault["times"] -= 1
                fault["hits"] += 1
                return fault
        return None


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections end after this
    label = "server"  # in the message of a 500 for a bug: "test <label> internal error: ..."

    # --------------------------------------------------------------- plumbing
    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._conns.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.owner._lock:
            self.owner._conns.discard(self.connection)

    @property
    def owner(self):
        """The ``LocalServer`` this handler serves."""
        return self.server.owner  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    # --------------------------------------------------------------- hooks
    def on_request(self) -> None:
        """Called when a request arrives, before faults and routing."""

    def apply_fault(self, fault: dict) -> bool:
        """Act on a fault the request matched; True when that answered it (False: route it as usual)."""
        raise NotImplementedError

    def route(self) -> None:
        raise NotImplementedError

    def record(self, status: int | None) -> None:
        """Record the request once, with the status it is answered (None: no answer); called before the answer."""

    def answer_error(self, e: HttpError) -> None:
        self.send_json(e.status, {"error": e.message})

    # --------------------------------------------------------------- request body
    def content_length(self) -> int | None:
        """The request's Content-Length (0 without one), or None for a chunked body."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return None
        return int(self.headers.get("Content-Length") or 0)

    def iter_body(self, limit: int | None = None):
        """Yield the request body in pieces as it arrives: all of it, or at most ``limit`` bytes. A later call goes
        on where an earlier one stopped."""
        got = 0
        while not self._body_done and (limit is None or got < limit):
            if not self._part_left:
                self._next_part()
                continue
            want = self._part_left if limit is None else min(self._part_left, limit - got)
            chunk = self.rfile.read(min(CHUNK, want))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            self._part_left -= len(chunk)
            self._body_bytes += len(chunk)
            got += len(chunk)
            yield chunk

    def _next_part(self) -> None:
        """Go on to the next part of the body: the whole of a Content-Length body, or the next chunk."""
        length = self.content_length()
        if length is not None:
            self._part_left = length if self._part_left is None else 0
            self._body_done = self._part_left == 0
            return
        if self._part_left is not None:  # the CRLF after the previous chunk's data
            self.rfile.readline()
        self._part_left = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if self._part_left == 0:  # the last chunk; then trailers up to an empty line
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            self._body_done = True

    def read_body(self) -> bytes:
        return b"".join(self.iter_body())

    def drop(self, after: int | None = None) -> None:
        """Read ``after`` bytes of the body (None: all of it), then have the connection reset without an answer."""
        for _ in self.iter_body(limit=after):
            pass
        raise Dropped()

    # --------------------------------------------------------------- dispatch
    def _dispatch(self) -> None:
        self._body_bytes, self._part_left, self._body_done = 0, None, False
        self._status, self._recorded = None, False
        self.url_parts = urlsplit(self.path)
        self.req_path = unquote(self.url_parts.path)
        self.on_request()
        try:
            fault = self.owner._take_fault(self.command, self.req_path)
            if fault is None or not self.apply_fault(fault):
                self.route()
        except Dropped:
            self._reset_connection()
        except HttpError as e:
            self._answer_http_error(e)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug here must show as a 500, not a hang
            self._answer_bug(e)
        finally:
            self._record_once()

    def _reset_connection(self) -> None:
        self._record_once()
        self.close_connection = True
        # SO_LINGER 0: close sends a RST, the client sees its connection reset mid-request
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _answer_http_error(self, e: HttpError) -> None:
        if not self._body_done:
            try:
                self.read_body()
            except Exception:  # noqa: BLE001 - a broken body: answer and close
                self.close_connection = True
        self.answer_error(e)

    def _answer_bug(self, e: Exception) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            if self._status is None:
                self.send_json(500, {"error": f"test {self.label} internal error: {type(e).__name__}: {e}"})

    def _record_once(self) -> None:
        if not self._recorded:
            self._recorded = True
            self.record(self._status)

    # --------------------------------------------------------------- responses
    def begin_response(self, status: int) -> None:
        """Record the request with ``status``, then send the status line."""
        self._status = status
        self._record_once()
        self.send_response(status)

    def send_bytes(self, status: int, data: bytes, headers: dict | None = None) -> None:
        self.begin_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def send_json(self, status: int, obj, headers: dict | None = None, content_type: str = "application/json") -> None:
        self.send_bytes(
            status, json.dumps(obj).encode(), {"Content-Type": f"{content_type}; charset=utf-8", **(headers or {})}
        )
