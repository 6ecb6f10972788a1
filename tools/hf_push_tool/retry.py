"""Retries with exponential backoff for publishing: 5xx, 429, timeouts and dropped connections are
retried, a server's Retry-After is honoured (up to net.RETRY_AFTER_CAP, never less than the
backoff), and the operation gives up when its attempts or its retry budget (net.Limits.budget) are
spent; anything else is the caller's to explain. What was already stored is not sent again on the
next attempt (the Hub's LFS batch answer and Ollama's blob check skip it)."""

from __future__ import annotations

import time

from upload_common.errors import RetryableError, UploadError

from . import net


def causes(exc: BaseException):
    """The exception and what it was raised from (huggingface_hub wraps a failed LFS upload in a
    RuntimeError whose cause is the HTTP or connection error)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def status_of(exc) -> int | None:
    for e in causes(exc):
        response = getattr(e, "response", None)
        code = getattr(response, "status_code", None) if response is not None else getattr(e, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _transport_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    # httpx / httpx2 transport errors: connection refused or dropped, read/write timeouts
    names = {cls.__name__ for cls in type(exc).__mro__}
    modules = {cls.__module__.split(".")[0] for cls in type(exc).__mro__}
    return bool({"TransportError", "TimeoutException"} & names and {"httpx", "httpx2", "httpcore"} & modules)


def is_retryable(exc: BaseException) -> bool:
    code = status_of(exc)
    if code is not None:
        return code >= 500 or code in (408, 429)
    return any(_transport_error(e) for e in causes(exc))


def _request_host(exc) -> str | None:
    """host:port of the request that failed, where the error (or its response) still knows it."""
    for e in causes(exc):
        for holder in (e, getattr(e, "response", None)):
            try:
                url = holder.request.url  # httpx raises RuntimeError when an error has no request
            except Exception:  # noqa: BLE001 - no request attached
                continue
            if getattr(url, "host", None):
                return net.host_of(url)
    return None


def retry_after(exc) -> float | None:
    """A server's Retry-After in seconds (delay-seconds form), if the failure carries one."""
    for e in causes(exc):
        headers = getattr(getattr(e, "response", None), "headers", None)
        value = str((headers or {}).get("retry-after") or "").strip()
        if value.isdigit():
            return float(value)
    return None


def describe(exc, where: str) -> tuple[str, str]:
    """(host, what went wrong) for a retryable failure: "did not answer within 60 s"..."""
    seen = net.WATCH.last_failure
    host = _request_host(exc) or (seen[0] if seen else where) or "the server"
    code = status_of(exc)
    if code:
        return host, net.failure_text(None, code)
    error = next((e for e in causes(exc) if _transport_error(e)), exc)
    if type(error) is ConnectionError and seen:  # a client that replaced the transport error by its own message
        return seen
    return host, net.failure_text(error)


def with_retries(
    what: str, fn, *, attempts: int = 5, wait: float = 2.0, log=lambda m: None, explain=None, where: str = ""
):
    """``fn()``, tried up to ``attempts`` times while failures are retryable and the retry budget
    lasts; then a RetryableError (exit code 3) naming the host and what it did, and saying that a
    rerun sends only what is missing. Any other failure is passed to ``explain(exc)``, which returns
    the known error to raise instead (one line, what to do) or None to let it through with its
    traceback. ``where``: the host to name when the failure does not carry it."""
    t0 = time.monotonic()
    with net.operation() as watch:
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except UploadError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                out = next((e for e in causes(exc) if isinstance(e, net.OutOfTime)), None)
                if out is None and watch.refused:  # the server asked for a wait the budget cannot afford
                    out = net.OutOfTime(*watch.refused, watch.spent)
                if out is None and not is_retryable(exc):
                    known = explain(exc) if explain else None
                    if known is None:
                        raise
                    raise known from None
                watch.charge_attempt()
                host, why = (out.host, out.why) if out else describe(exc, where)
                backoff = wait * 2 ** (attempt - 1)
                delay = max(backoff, min(retry_after(exc) or 0.0, net.RETRY_AFTER_CAP))
                if out or attempt == attempts or watch.spent + delay > watch.limits.budget:
                    raise RetryableError(
                        f"{what}: {host} {why} ({attempt} attempt{'s' if attempt > 1 else ''} over "
                        f"{time.monotonic() - t0:.0f} s): the service or the network is not answering; run the "
                        "same command again later: files already stored are not sent again",
                        attempts=attempt,
                        host=host,
                        last_error=why,
                    ) from None
                short = why.replace("answered ", "") if status_of(exc) else f"{host} {why}"
                log(f"{what}: {short}; retrying in {delay:.1f} s (attempt {attempt + 1} of {attempts})")
                time.sleep(delay)
                watch.charge_wait(delay)
    raise AssertionError("unreachable")  # pragma: no cover
