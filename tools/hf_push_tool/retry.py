"""Retries with exponential backoff for publishing: 5xx, 429, timeouts and dropped connections are
retried; anything else is the caller's to explain. What was already stored is not sent again on the
next attempt (the Hub's LFS batch answer and Ollama's blob check skip it)."""

from __future__ import annotations

import time

from upload_common.errors import RetryableError, UploadError


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


def with_retries(what: str, fn, *, attempts: int = 5, wait: float = 2.0, log=lambda m: None, explain=None):
    """``fn()``, tried up to ``attempts`` times while failures are retryable; then a RetryableError
    (exit code 3) that says a rerun will send only what is missing. Any other failure is passed to
    ``explain(exc)``, which returns the known error to raise instead (one line, what to do) or None to
    let it through with its traceback."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except UploadError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_retryable(exc):
                known = explain(exc) if explain else None
                if known is None:
                    raise
                raise known from None
            why = f"HTTP {status_of(exc)}" if status_of(exc) else type(exc).__name__
            if attempt == attempts:
                raise RetryableError(f"{what} failed {attempts} times ({why}): the service or the network is not "
                                     "answering; run the same command again later: files already stored are not "
                                     "sent again", attempts=attempts, last_error=why) from None
            delay = wait * 2 ** (attempt - 1)
            log(f"{what}: {why}; retrying in {delay:.1f} s (attempt {attempt + 1} of {attempts})")
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
