"""Everything that can be checked before the first step runs: each option of each step (quantization
types, repo names, input files), each publish target (a local folder that can be written, the Hugging
Face token and what it may do, an Ollama server that answers) and the disk space of the whole plan.
A run stops on any finding before anything is written; ``--dry-run`` shows the same findings.
Only the steps that will run are checked (a rerun that skips the publish asks no server)."""

from __future__ import annotations

import os
import tempfile
import threading
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from upload_common.contract import SPACE_MARGIN, nearest_existing
from upload_common.errors import UploadError, UsageError
from upload_common.safety import check_repo_id, is_inside

from .disk_plan import peak
from .plan import PlannedStep, naming
from .request import Request

NET_WAIT = float(os.environ.get("UPLOAD_DRIVER_PREFLIGHT_TIMEOUT", "20"))
OLLAMA_DEFAULT = "http://127.0.0.1:11434"


@dataclass(frozen=True)
class Finding:
    """One reason the run cannot start: a line that says what to do; ``usage`` when an option is wrong."""

    check: str
    problem: str
    usage: bool = False


def _catch(check: str, fn) -> list[Finding]:
    try:
        fn()
        return []
    except UploadError as exc:
        return [Finding(check, exc.message, isinstance(exc, UsageError))]


def _gguf(req: Request) -> list[Finding]:
    from upload_common.quants import get_quant

    if "gguf" not in req.formats:
        return []
    out, known = [], []
    for q in req.quants:
        try:
            known.append(get_quant(q))
        except UsageError as exc:
            out.append(Finding("--quant", exc.message, usage=True))
    needy = [q["name"] for q in known if q["needs_imatrix"]]
    if needy and not (req.gguf.get("imatrix") or req.gguf.get("calibration")):
        out.append(
            Finding(
                "--quant",
                f"{', '.join(needy)} need an importance matrix: set imatrix or calibration in "
                "the config's [gguf] table",
                usage=True,
            )
        )
    wanted = req.docs.get("ollama_quant")
    if wanted and str(wanted).upper() not in {q["name"] for q in known}:
        out.append(
            Finding(
                "ollama_quant",
                f"ollama_quant {wanted} is not one of the GGUF types asked for ({', '.join(req.quants)})",
                usage=True,
            )
        )
    return out


def _names(req: Request) -> list[Finding]:
    def check():
        name, namespace = naming(req)
        if namespace:  # a local target's name is a folder name made safe by naming(); the Hub's rules are stricter
            check_repo_id(f"{namespace}/{name}", "hf: target", namespace=True)
        for s, repo in (req.docs.get("repos") or {}).items():
            check_repo_id(repo, f"[docs] repos {s} =")
        if req.docs.get("base_model"):
            check_repo_id(req.docs["base_model"], "--base-model", namespace=True)

    return _catch("names", check)


def _code(found: dict) -> list[Finding]:
    """A tokenizer that only code in the trainer folder defines (merge-tool would refuse it after the
    run started): refused now. References that can simply be dropped are dropped by merge-tool."""
    folder = (found.get("tokenizer") or {}).get("dir")
    if not folder:
        return []
    try:
        from upload_common.remote_code import check_sanitizable

        return _catch("tokenizer", lambda: check_sanitizable(folder, ["tokenizer_config.json"], "upload-driver"))
    except ImportError:  # no transformers beside the driver's extra: merge-tool makes this check first thing
        return []


def _inputs(steps: Iterable[PlannedStep], art: Path) -> list[Finding]:
    """Inputs the user named (a base folder, calibration text, importance matrix) exist."""
    out = []
    for step in steps:
        for key, path in step.inputs.items():
            if not is_inside(path, art) and not Path(path).exists():
                out.append(Finding(step.name, f"{key} {path} does not exist: fix the path", usage=True))
    return out


def _writable(folder: Path) -> str | None:
    """Why nothing can be written under ``folder`` (probed in its nearest existing parent), or None."""
    probe = nearest_existing(folder)
    if not probe.is_dir():
        return f"{probe} is a file"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".upload-driver-probe-"):
            pass
    except OSError as exc:
        return f"{probe} cannot be written ({exc.strerror or exc})"
    return None


def _local(target: Path, req: Request) -> list[Finding]:
    work = req.work
    trainer = req.trainer_output
    for inner, what, both in (
        (trainer, "the trainer output", True),
        (work / "artifacts", "the artifacts", False),
        (work / ".upload-driver", "the driver's state", False),
    ):
        if is_inside(target, inner) or (both and is_inside(inner, target)):
            return [
                Finding(
                    "local:", f"local:{target} overlaps {what} ({inner}): publish into a folder of its own", usage=True
                )
            ]
    why = _writable(target)
    return [Finding("local:", f"local:{target}: {why}: choose a folder you can write", usage=True)] if why else []


def _bounded(what: str, host: str, fn):
    """``fn()`` on a daemon thread, given up after NET_WAIT seconds (a stalled server never hangs the driver)."""
    box: dict = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(NET_WAIT)
    if t.is_alive():
        raise UploadError(
            f"{what}: {host} did not answer within {NET_WAIT:.0f} s: check the network or the server "
            "(UPLOAD_DRIVER_PREFLIGHT_TIMEOUT sets the wait)"
        )
    if "error" in box:
        raise box["error"]
    return box["value"]


def _hub(req: Request) -> list[Finding]:
    from huggingface_hub import HfApi, constants, get_token

    if not get_token():
        return [
            Finding(
                "hf:",
                "no Hugging Face token: set HF_TOKEN or log in with `hf auth login` (the token is "
                "never read from the command line)",
            )
        ]
    offline = os.environ.get("HF_HUB_OFFLINE")  # as the publishing step's process will see it
    if offline.strip().upper() in ("1", "ON", "YES", "TRUE") if offline is not None else constants.HF_HUB_OFFLINE:
        return [Finding("hf:", "HF_HUB_OFFLINE is set: publishing to the Hub needs the network: unset it")]
    _, namespace = naming(req)
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    try:
        info = _bounded("checking the Hugging Face token", endpoint, HfApi(endpoint=endpoint).whoami)
    except UploadError as exc:
        return [Finding("hf:", exc.message)]
    except Exception as exc:  # noqa: BLE001 - 401 and friends: one line
        code = getattr(getattr(exc, "response", None), "status_code", None)
        why = (
            "the Hub refused the token (401): set HF_TOKEN to a valid token"
            if code == 401
            else f"the Hub at {endpoint} could not check the token ({type(exc).__name__}{f' {code}' if code else ''})"
        )
        return [Finding("hf:", why)]
    if ((info.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        return [Finding("hf:", "the Hugging Face token is read-only: create one with write access and set HF_TOKEN")]
    mine = {info.get("name"), *[o.get("name") for o in info.get("orgs") or []]}
    if namespace and namespace not in mine:
        return [
            Finding(
                "hf:",
                f"the token belongs to {info.get('name')} (organisations: "
                f"{', '.join(sorted(m for m in mine if m and m != info.get('name'))) or 'none'}), "
                f"which cannot create repos under {namespace}: use hf:{info.get('name')}/NAME or a "
                "token of that organisation",
            )
        ]
    return []


def ollama_url() -> str:
    host = os.environ.get("OLLAMA_HOST") or OLLAMA_DEFAULT
    if "://" not in host:
        host = f"http://{host}"
    scheme, _, rest = host.partition("://")
    if ":" not in rest.split("/")[0]:
        rest = rest.split("/")[0] + ":11434"
    return f"{scheme}://{rest.rstrip('/')}"


def _ollama() -> list[Finding]:
    url = ollama_url()
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=NET_WAIT) as r:  # noqa: S310 - the user's server
            r.read(4096)
        return []
    except OSError as exc:
        why = getattr(exc, "reason", None) or exc
        return [
            Finding(
                "ollama",
                f"no Ollama server answers at {url} ({why}): start `ollama serve`, or set OLLAMA_HOST to where it runs",
            )
        ]


def _disk(req: Request, steps: Sequence[PlannedStep], will_run: set) -> tuple[list[Finding], int, int]:
    import shutil

    need, _ = peak(steps, will_run, {})
    probe = nearest_existing(req.work)
    free = shutil.disk_usage(probe).free
    if need and free < need + SPACE_MARGIN:
        return (
            [
                Finding(
                    "disk",
                    f"the plan writes ~{need / 1e9:.2f} GB at its peak (plus a {SPACE_MARGIN >> 20} MB margin) in "
                    f"{probe} but only {free / 1e9:.2f} GB is free: free some space or pass another "
                    "--work",
                )
            ],
            need,
            free,
        )
    return [], need, free


def check(req: Request, found_output: dict, steps: Sequence[PlannedStep], will_run: set) -> tuple[list[Finding], dict]:
    """(findings, {"expected_bytes" (the run's peak on disk), "free_bytes"}) for the steps in ``will_run``."""
    art = req.work / "artifacts"
    running = [s for s in steps if s.name in will_run]
    found = [*_gguf(req), *_names(req), *_inputs(running, art), *_code(found_output)]
    why = _writable(req.work)
    if why:
        found.append(Finding("--work", f"the work folder {req.work}: {why}: pass another --work", usage=True))
    for step in running:
        if "site" in step.rw:
            found += _local(step.rw["site"], req)
        elif step.token and step.tool == "hf-push-tool":
            found += _hub(req)
        elif step.name.startswith("publish-ollama"):
            found += _ollama()
    disk, need, free = _disk(req, steps, will_run)
    return [*found, *disk], {"expected_bytes": need, "free_bytes": free}


def refuse(found: list[Finding]) -> None:
    """Stop the run on the findings, in one line (a usage error when any option is wrong)."""
    if not found:
        return
    text = "; ".join(f.problem for f in found)
    cls = UsageError if any(f.usage for f in found) else UploadError
    raise cls(f"cannot start, nothing was run: {text}", findings=[f.problem for f in found])
