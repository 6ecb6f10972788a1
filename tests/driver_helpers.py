"""upload-driver's CLI as the driver tests run it (test_driver.py, test_hostile_driver.py,
test_hostile_driver_preflight.py): no Docker engine to be found, a run in a process of its own, the
one-line error a refusal ends in, which steps a run skipped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

from upload_driver.cli import main

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def drive(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env={**NO_DOCKER, **(env or {})})


def driver_process(trainer: Path, work: Path, *args) -> list[str]:
    """The command line of an `upload-driver run` in a process of its own (to be killed), local processes."""
    run = [sys.executable, "-m", "upload_driver.cli", "run", str(trainer), "--work", str(work)]
    return [*run, *map(str, args), "--runtime", "local"]


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def skipped(result) -> dict:
    assert result.exit_code == 0, result.output
    return {r["step"]: r["skipped"] for r in json.loads(result.stdout)["steps"]}
