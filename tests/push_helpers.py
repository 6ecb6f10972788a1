"""hf-push-tool driven as the hostile-push tests drive it (test_hostile_push.py, test_hostile_push_network.py): its
CLI on the run's artifacts and docs, the token the Hub server knows, and the one-line error each refusal ends in."""

from __future__ import annotations

from click.testing import CliRunner

from hf_push_tool.cli import main as push_main

TOKEN = "hf_hostile_write_TOKEN_77"
TOKENS = {TOKEN: {"user": "alice", "orgs": [], "role": "write"}}


def invoke(*args):
    return CliRunner().invoke(push_main, [str(a) for a in args])


def sets_args(run_artifacts, docs, out, *keys):
    return ["--docs", docs, *[a for k in keys for a in ("--artifact", run_artifacts[k])], "--out", out]


def push_lora(run_artifacts, docs, tmp_path, *extra):
    return invoke(*sets_args(run_artifacts, docs, tmp_path / "push", "lora"), "--set", "lora", *extra)


def one_line_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]
