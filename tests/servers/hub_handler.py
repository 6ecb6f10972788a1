"""The test Hub's request handler: a request handed to the server's routes, injected faults, the Hub's error
answer (``X-Error-Code``, ``X-Error-Message``), the request log, and the routes' answers sent (JSON, bytes, file
content with a range)."""

from __future__ import annotations

import time
from urllib.parse import parse_qs

from .http import CHUNK, RequestHandler
from .hub_store import _HttpError


class _Handler(RequestHandler):
    server_version = "TestHub/1.0"
    label = "hub"

    def route(self) -> None:
        segs = [s for s in self.url_parts.path.split("/") if s != ""]
        self.owner.route(self, self.command, segs, parse_qs(self.url_parts.query, keep_blank_values=True))

    def apply_fault(self, fault: dict) -> bool:
        if fault["action"] == "delay":
            time.sleep(fault["delay"])
            return False
        if fault["action"] == "drop":
            n = fault["drop_after"]
            if n is None:
                length = self.content_length()
                n = min((length if length is not None else 2 * 65536) // 2, 256 * 1024)
            self.drop(after=n)
        self.read_body()
        body = fault["body"]
        if body is None:
            body = {"error": f"Injected fault: HTTP {fault['status']}"}
        if isinstance(body, (dict, list)):
            self.send_json(fault["status"], body, headers=fault["headers"])
        else:
            data = body.encode() if isinstance(body, str) else bytes(body)
            self.send_bytes(fault["status"], data, {"Content-Type": "text/plain", **fault["headers"]})
        return True

    def answer_error(self, e: _HttpError) -> None:
        headers = dict(e.headers)
        if e.code:
            headers["X-Error-Code"] = e.code
        headers["X-Error-Message"] = e.message
        self.send_json(e.status, {"error": e.message, **e.extra}, headers=headers)

    def record(self, status: int | None) -> None:
        self.owner._record(
            {
                "method": self.command,
                "path": self.req_path,
                "query": self.url_parts.query,
                "headers": {k: v for k, v in self.headers.items()},
                "status": status,
                "bytes": self._body_bytes,
                "time": time.monotonic(),
            }
        )

    # --------------------------------------------------------------- responses
    def send(self, response: tuple) -> None:
        kind, rest = response[0], response[1:]
        if kind == "json":
            status, obj, headers, content_type = rest
            self.send_json(status, obj, headers, content_type)
        elif kind == "bytes":
            self.send_bytes(*rest)
        else:
            self.send_content(*rest, head_only=self.command == "HEAD")

    def send_content(self, status: int, headers: dict, source, start: int, length: int, head_only: bool) -> None:
        self.begin_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head_only or length == 0:
            return
        if isinstance(source, bytes):
            self.wfile.write(source[start : start + length])
            return
        with open(source, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
