"""One error hierarchy for every tool.

A known error carries an exit code, fields that describe it, and a message that says what to do.
CLIs print known errors as one line (``error: ...``) and exit with ``exit_code``; unknown errors
keep their traceback. Each class also inherits the stdlib type a Python caller would expect.
"""

import errno

EXIT_OK = 0
EXIT_TOOL_ERROR = 1
EXIT_USAGE = 2
EXIT_RETRYABLE = 3  # publish failures worth retrying (network, 5xx)


class UploadError(Exception):
    """Base of every known error. ``fields`` go into error.json."""

    exit_code = EXIT_TOOL_ERROR
    kind = "error"

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "exit_code": self.exit_code, **self.fields}


class UsageError(UploadError, ValueError):
    """Bad options or arguments."""

    exit_code = EXIT_USAGE
    kind = "usage"


class InputNotFound(UploadError, FileNotFoundError):
    """Something the step needs is not where it was looked for."""

    kind = "input_not_found"


class InvalidInput(UploadError, ValueError):
    """An input exists but is unusable: corrupt, inconsistent, or for another model."""

    kind = "invalid_input"


class Unsupported(UploadError, NotImplementedError):
    """A valid input this tool deliberately refuses (another PEFT type, a format it cannot make)."""

    kind = "unsupported"


class OutputExists(UploadError, FileExistsError):
    kind = "output_exists"


class NotEnoughSpace(UploadError, OSError):
    kind = "not_enough_space"


class BaseModelUnavailable(UploadError, FileNotFoundError):
    kind = "base_unavailable"


class RetryableError(UploadError, ConnectionError):
    exit_code = EXIT_RETRYABLE
    kind = "retryable"


class SystemFault(UploadError, OSError):
    """The operating system refused a read or write: a full disk, a read-only or forbidden folder,
    too many open files."""

    kind = "os_error"


_OS_ERRORS = {  # errno -> (what happened, what to do)
    errno.ENOSPC: ("the disk is full", "free some space or choose a folder on another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or choose a folder on another disk"),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.EACCES: ("permission denied", "check the folder's owner and permissions, or choose another folder"),
    errno.EPERM: ("operation not permitted", "check the folder's owner and permissions, or choose another folder"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n 4096) and rerun"),
    errno.ENFILE: ("too many open files in the system", "close other programs or raise the limit, and rerun"),
}


def from_os_error(exc: BaseException, doing: str = "") -> "SystemFault | None":
    """A one-line known error for an OSError whose cause the user can act on; None for others."""
    if isinstance(exc, UploadError) or not isinstance(exc, OSError) or exc.errno not in _OS_ERRORS:
        return None
    what, todo = _OS_ERRORS[exc.errno]
    # a copy (shutil.copyfile) names its source first and its destination second: a full or read-only
    # disk is the destination's
    named = (exc.filename2 or exc.filename) if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else exc.filename
    where = f" ({named})" if named else ""
    prefix = f"{doing}: " if doing else ""
    return SystemFault(
        f"{prefix}{what}{where}: {todo}",
        errno=errno.errorcode.get(exc.errno, str(exc.errno)),
        path=str(named) if named else None,
    )
