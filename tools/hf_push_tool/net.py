"""Bounded network waits for publishing: a timeout on every request (seconds without progress while
connecting, sending or waiting for an answer) and a retry budget (seconds a failing operation may
spend on stalled attempts and waits, huggingface_hub's own retries included) after which it gives up.

Both HTTP clients (huggingface_hub's shared httpx2 client, the Ollama client's httpx client) send
through ``guarded_transport``: it fills in the timeout where a call asked for none, notes each
failure (no answer, 429, 5xx) and each answer, caps a server's ``Retry-After`` at
``RETRY_AFTER_CAP``, and refuses to start a request once the current operation's budget is spent
(``OutOfTime``), so a retry loop inside a library ends too."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
import threading
import time
from dataclasses import dataclass

from upload_common.errors import UsageError

DEFAULT_TIMEOUT = 60.0
TIMEOUT_ENV = "UPLOAD_DRIVER_NET_TIMEOUT"
BUDGET_ENV = "UPLOAD_DRIVER_RETRY_BUDGET"
BUDGET_PER_TIMEOUT = 5  # default budget: five timeouts
RETRY_AFTER_CAP = 60.0  # the longest wait a server's Retry-After is honoured for
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Limits:
    timeout: float = DEFAULT_TIMEOUT  # seconds without progress for a connect, a send or an answer
    budget: float = DEFAULT_TIMEOUT * BUDGET_PER_TIMEOUT  # seconds of failed attempts and waits per operation


def _seconds(value, what: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds < 10**6:
        raise UsageError(f"{what} {value!r} is not a number of seconds: use a positive number such as 60")
    return seconds


def limits_from(timeout=None, budget=None) -> Limits:
    """The options win, then UPLOAD_DRIVER_NET_TIMEOUT / UPLOAD_DRIVER_RETRY_BUDGET, then the defaults
    (60 s; a budget of five timeouts)."""
    t = _seconds(timeout, "--timeout") or _seconds(os.environ.get(TIMEOUT_ENV), TIMEOUT_ENV) or DEFAULT_TIMEOUT
    b = _seconds(budget, "--retry-budget") or _seconds(os.environ.get(BUDGET_ENV), BUDGET_ENV)
    return Limits(timeout=t, budget=b or t * BUDGET_PER_TIMEOUT)


class OutOfTime(Exception):
    """The current operation's retry budget is spent: raised instead of sending another request."""

    def __init__(self, host: str, why: str, spent: float):
        super().__init__(f"{host} {why}; {spent:.0f} s spent retrying")
        self.host, self.why, self.spent = host, why, spent


class _Watch:
    """What the current operation's failures have cost. ``spent``: seconds of failed attempts (from
    the last answer to the failure) and of waits, charged by the retry loop; ``streak``: when the
    first failure since the last answer happened (a library's own retries run inside one attempt)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.limits = Limits()
        self.active, self.spent, self.streak, self.last_answer = False, 0.0, None, time.monotonic()
        self.last_failure: tuple[str, str] | None = None
        self.refused: tuple[str, str] | None = None

    def begin(self) -> None:
        with self._lock:
            self.active, self.spent, self.streak, self.last_answer = True, 0.0, None, time.monotonic()
            self.last_failure = self.refused = None

    def left(self) -> float:
        """Seconds of the budget not yet spent, counting the current run of failures."""
        with self._lock:
            streak = time.monotonic() - self.streak if self.streak is not None else 0.0
            return self.limits.budget - self.spent - streak

    def refuse(self, host: str, why: str) -> None:
        """End the operation: no further request is sent (a server asked for a wait the budget cannot afford)."""
        with self._lock:
            if self.active:
                self.refused = (host, why)

    def end(self) -> None:
        self.active = False

    def answered(self) -> None:
        with self._lock:
            self.last_answer, self.streak = time.monotonic(), None

    def failed(self, host: str, why: str) -> None:
        with self._lock:
            self.streak = self.streak or time.monotonic()
            self.last_failure = (host, why)

    def charge_attempt(self) -> None:
        """A failed attempt of the operation: its time since the last answer is spent."""
        with self._lock:
            self.spent += time.monotonic() - self.last_answer

    def charge_wait(self, seconds: float) -> None:
        with self._lock:
            self.spent += seconds
            self.last_answer, self.streak = time.monotonic(), None

    def check(self, host: str) -> None:
        """Raise OutOfTime when failures since the last answer push the operation past its budget."""
        with self._lock:
            if self.active and self.refused:
                raise OutOfTime(*self.refused, self.spent)
            if not self.active or self.streak is None:
                return
            spent = self.spent + time.monotonic() - self.streak
            if spent > self.limits.budget:
                why = self.last_failure[1] if self.last_failure else "did not answer"
                raise OutOfTime(self.last_failure[0] if self.last_failure else host, why, spent)


WATCH = _Watch()


def configure(limits: Limits) -> None:
    WATCH.limits = limits


@contextlib.contextmanager
def operation():
    """One operation's retries (``with_retries``): its failures share one budget."""
    WATCH.begin()
    try:
        yield WATCH
    finally:
        WATCH.end()


def host_of(url) -> str:
    port = getattr(url, "port", None)
    return f"{url.host}:{port}" if port else str(url.host)


def failure_text(exc: BaseException | None, status: int | None = None) -> str:
    """What went wrong, after the host's name: "did not answer within 60 s", "answered HTTP 503"..."""
    if status:
        return f"answered HTTP {status}"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"TimeoutException", "TimeoutError", "timeout"}:
        return f"did not answer within {WATCH.limits.timeout:g} s"
    if names & {"ConnectError", "ConnectionRefusedError"}:
        return "could not be reached (connection refused or no route)"
    return f"dropped the connection ({type(exc).__name__})"


_RATELIMIT_T = re.compile(r"(\bt\s*=\s*)(\d+)")


def _limit_waits(response, host: str) -> None:
    """A server's Retry-After (and RateLimit t=) is honoured up to RETRY_AFTER_CAP: a longer one is
    rewritten to the cap, so a library that honours it waits at most that long; a Retry-After the
    retry budget cannot afford ends the operation (the next request is refused)."""
    cap = int(RETRY_AFTER_CAP)
    asked = (response.headers.get("retry-after") or "").strip()
    if asked.isdigit():
        if min(int(asked), cap) > WATCH.left():
            WATCH.refuse(host, f"asked to wait {asked} s (Retry-After), more than the retry budget left")
        if int(asked) > cap:
            response.headers["Retry-After"] = str(cap)
    limit = response.headers.get("ratelimit")
    if limit:
        response.headers["RateLimit"] = _RATELIMIT_T.sub(lambda m: m.group(1) + str(min(int(m.group(2)), cap)), limit)


def _fill_timeouts(request, seconds: float) -> None:
    given = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {
        k: (seconds if given.get(k) is None else min(given[k], seconds)) for k in ("connect", "read", "write", "pool")
    }


@functools.cache
def _transport_class(module_name: str):
    http = importlib.import_module(module_name)

    class GuardedTransport(http.HTTPTransport):
        """The library's own transport, with the timeout and the retry budget enforced."""

        def handle_request(self, request):
            host = host_of(request.url)
            WATCH.check(host)
            _fill_timeouts(request, WATCH.limits.timeout)
            try:
                response = super().handle_request(request)
            except Exception as exc:
                WATCH.failed(host, failure_text(exc))
                raise
            if response.status_code in RETRY_STATUSES:
                WATCH.failed(host, failure_text(None, response.status_code))
                _limit_waits(response, host)
            else:
                WATCH.answered()
            return response

    return GuardedTransport


def guarded_transport(module_name: str):
    """A transport for an httpx-style client (``httpx`` or ``httpx2``)."""
    return _transport_class(module_name)()


def hub_client_factory():
    """huggingface_hub's default client (its event hooks, redirects, headers) with the timeout and
    the guarded transport."""
    from huggingface_hub.utils import _http

    base = _http.default_client_factory()
    try:
        module = type(base).__module__.split(".")[0]
        http = importlib.import_module(module)
        return http.Client(
            event_hooks=base.event_hooks,
            follow_redirects=base.follow_redirects,
            headers=base.headers,
            timeout=WATCH.limits.timeout,
            transport=guarded_transport(module),
        )
    finally:
        base.close()


@contextlib.contextmanager
def hub_client():
    """huggingface_hub's shared client made by ``hub_client_factory`` while the block runs."""
    import huggingface_hub
    from huggingface_hub.utils import _http

    before = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    huggingface_hub.set_client_factory(hub_client_factory)
    try:
        yield
    finally:
        huggingface_hub.set_client_factory(before)


def ollama_client(host: str | None):
    import ollama

    return ollama.Client(host=host, timeout=WATCH.limits.timeout, transport=guarded_transport("httpx"))
