"""One error hierarchy for every tool.

A known error carries an exit code, fields that describe it, and a message that says what to do.
CLIs print known errors as one line (``error: ...``) and exit with ``exit_code``; unknown errors
keep their traceback. Each class also inherits the stdlib type a Python caller would expect.
"""

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
