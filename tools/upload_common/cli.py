"""What every tool's CLI shares: error formatting, JSON output, common options."""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from .errors import EXIT_USAGE, UploadError, from_os_error
from .step import Fingerprinted, only_fingerprint

DEBUG_ENV = "UPLOAD_DRIVER_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")


def report_errors(func):
    """Known errors become one line on stderr and their exit code; unknown ones keep the traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context(silent=True)
        try:
            with only_fingerprint(bool(ctx and ctx.meta.get(_FINGERPRINT))):
                return func(*args, **kwargs)
        except Fingerprinted as done:
            click.echo(done.fingerprint)
            return None
        except (UploadError, OSError) as exc:
            known = exc if isinstance(exc, UploadError) else from_os_error(exc)
            if known is None or debug_enabled():
                raise
            click.echo(f"error: {known.message}", err=True)
            click.echo(f"(set {DEBUG_ENV}=1 to see the traceback)", err=True)
            sys.exit(known.exit_code)
        except click.UsageError:
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def emit(result, as_json: bool) -> None:
    """Results go to stdout: JSON with --json, else a short human form."""
    if as_json or not isinstance(result, (str, os.PathLike)):
        click.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(str(result))


json_option = click.option("--json", "as_json", is_flag=True, help="Print the step manifest as JSON on stdout.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
_FINGERPRINT = "upload_common.fingerprint"
fingerprint_option = click.option(
    "--fingerprint",
    is_flag=True,
    expose_value=False,
    callback=lambda ctx, _param, value: ctx.meta.__setitem__(_FINGERPRINT, value),
    help="Check the arguments and print the step's fingerprint (what its manifest would record), doing "
    "nothing else: what upload-driver compares with a finished step's manifest to skip it.",
)


def log(message: str) -> None:
    """Progress and decisions go to stderr."""
    click.echo(message, err=True)


__all__ = ["report_errors", "emit", "json_option", "overwrite_option", "fingerprint_option", "log", "EXIT_USAGE"]
