"""Running a step in its tool's container, through the Docker SDK.

Inputs are mounted read-only under /work/in, the artifacts folder at /work/out (a step writes
``<out>.partial`` beside its output, so the parent must be writable), publish folders under
/work/rw. Containers run as the caller's uid:gid with ``--network none`` unless the step publishes
or downloads, with every GPU for GPU steps when a GPU runtime is there. The Hugging Face token
reaches a container as a read-only file (HF_TOKEN_PATH names it), never as an environment value:
it does not show in ``docker inspect``. Containers carry labels so that leftovers of a killed run
are found and removed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shlex
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from upload_common.cli import debug_enabled
from upload_common.errors import UploadError

from .config import docker_bind_path
from .local import QUIET_ENV, failure, open_output, parse_fingerprint
from .plan import PlannedStep, render

LABEL = "upload-driver.work"
PASS_ENV = (
    "HF_ENDPOINT",
    "HF_HUB_DISABLE_XET",
    "HF_HUB_DISABLE_TELEMETRY",
    "HF_HUB_OFFLINE",
    "HF_HUB_ETAG_TIMEOUT",
    "OLLAMA_HOST",
    "UPLOAD_DRIVER_DEBUG",
    "TRANSFORMERS_VERBOSITY",
    "UPLOAD_DRIVER_NET_TIMEOUT",
    "UPLOAD_DRIVER_RETRY_BUDGET",
)
GPU_ERROR = "could not select device driver"


class DockerUnavailable(UploadError, ConnectionError):
    kind = "docker_unavailable"


def client():
    """A connected Docker client, or DockerUnavailable saying why."""
    try:
        import docker
    except ImportError:
        raise DockerUnavailable(
            "the docker Python package is not installed (pip install 'upload-driver[driver]')"
        ) from None
    try:
        c = docker.from_env(timeout=30)
        c.ping()
        return c
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine means the same to the user
        raise DockerUnavailable(f"no Docker engine answers ({' '.join(str(exc).split())[:160]})") from None


def missing_images(c, images: Iterable[str]) -> list[str]:
    import docker

    missing = []
    for name in dict.fromkeys(images):
        try:
            c.images.get(name)
        except docker.errors.ImageNotFound:
            missing.append(name)
    return missing


def work_id(work: Path) -> str:
    return hashlib.sha256(str(Path(work).absolute()).encode()).hexdigest()[:16]


def remove_leftovers(c, work: Path) -> int:
    """Containers of an earlier run on this work folder that were not removed (the driver was killed)."""
    gone = 0
    for ct in c.containers.list(all=True, filters={"label": f"{LABEL}={work_id(work)}"}):
        ct.remove(force=True)
        gone += 1
    return gone


def _gpu_request(gpu_id: str | None = None):
    """Every GPU (``--gpus all``), or the one named (``--gpus device=ID``)."""
    from docker.types import DeviceRequest

    if gpu_id is not None:
        return [DeviceRequest(device_ids=[gpu_id], capabilities=[["gpu"]])]
    return [DeviceRequest(count=-1, capabilities=[["gpu"]])]


def gpu_available(c, image_name: str, work: Path) -> tuple[bool, str]:
    """Whether a container can get the GPUs: start a tiny one asking for them. Without an NVIDIA runtime
    the engine creates it and fails at start; the created container is removed either way."""
    import docker

    ct = None
    try:
        ct = c.containers.create(
            image_name,
            ["--help"],
            device_requests=_gpu_request(),
            network_mode="none",
            labels={LABEL: work_id(work), "upload-driver.step": "gpu-probe"},
        )
        ct.start()
        ct.wait(timeout=120)
        return True, "GPU runtime found: GPU steps run with every GPU"
    except docker.errors.APIError as exc:
        why = (
            "no NVIDIA container runtime (install nvidia-container-toolkit)"
            if GPU_ERROR in str(exc)
            else " ".join(str(exc.explanation or exc).split())[:160]
        )
        return False, f"no GPU for containers: {why}; running on CPU"
    finally:
        if ct is not None:
            with contextlib.suppress(docker.errors.APIError):
                ct.remove(force=True)


def _in_path(step: PlannedStep, key: str) -> str:
    """An input keeps its own name inside the container (/work/in/<key>/<name>): tools record and show
    folder names (the run's name, the trainer's README), so both runtimes write the same files."""
    return f"/work/in/{key}/{step.inputs[key].name}"


def spec(
    step: PlannedStep, *, device: str, gpu: bool, work: Path, token_file: Path | None, gpu_id: str | None = None
) -> dict:
    """Everything the container is created with (also what --dry-run shows); ``gpu_id``: the one GPU it gets."""
    from docker.types import Mount

    mounts = [
        Mount(_in_path(step, k), docker_bind_path(p), type="bind", read_only=True) for k, p in step.inputs.items()
    ]
    mounts.append(Mount("/work/out", docker_bind_path(step.out.parent), type="bind"))
    mounts += [Mount(f"/work/rw/{k}", docker_bind_path(p), type="bind") for k, p in step.rw.items()]
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    if not debug_enabled():
        env = {**QUIET_ENV, **env}
    if token_file is not None:
        mounts.append(Mount("/run/secrets/hf_token", docker_bind_path(token_file), type="bind", read_only=True))
        env["HF_TOKEN_PATH"] = "/run/secrets/hf_token"
    if step.hf_cache:
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE)
        cache.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount("/work/hf-cache", docker_bind_path(cache), type="bind"))
        env["HF_HUB_CACHE"] = "/work/hf-cache"
    uid = os.getuid() if hasattr(os, "getuid") else 1000
    gid = os.getgid() if hasattr(os, "getgid") else 1000
    command = render(
        step,
        inp=lambda k: _in_path(step, k),
        out=lambda: f"/work/out/{step.out.name}",
        rw=lambda k: f"/work/rw/{k}",
        device=device,
    )
    return {
        "image": step.image,
        "command": [*command, "--overwrite"],
        "user": f"{uid}:{gid}",
        "mounts": mounts,
        "environment": env,
        "network_mode": "host" if step.network else "none",
        "working_dir": "/work",
        "labels": {LABEL: work_id(work), "upload-driver.step": step.name},
        "device_requests": _gpu_request(gpu_id) if gpu else None,
    }


def describe(s: dict) -> str:
    parts = ["docker", "run", "--rm", "--user", s["user"], "--network", s["network_mode"]]
    if s["device_requests"]:
        ids = s["device_requests"][0].get("DeviceIDs")
        parts += ["--gpus", f"device={','.join(ids)}" if ids else "all"]
    for m in s["mounts"]:
        parts += ["-v", f"{m['Source']}:{m['Target']}{':ro' if m.get('ReadOnly') else ''}"]
    for k in s["environment"]:
        parts += ["-e", k]
    return shlex.join([*parts, s["image"], *s["command"]])


class _Token:
    """The token as a 0600 file in a private folder for the duration of one container."""

    def __init__(self, needed: bool):
        from huggingface_hub import get_token

        self.token = get_token() if needed else None
        self.dir = self.path = None

    def __enter__(self) -> Path | None:
        if not self.token:
            return None
        self.dir = tempfile.mkdtemp(prefix="upload-driver-secret-")
        self.path = Path(self.dir) / "token"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        return self.path

    def __exit__(self, *exc) -> None:
        if self.path:
            self.path.unlink(missing_ok=True)
            os.rmdir(self.dir)


def run(
    c,
    step: PlannedStep,
    *,
    device: str,
    gpu: bool,
    work: Path,
    log,
    gpu_id: str | None = None,
    output: Path | None = None,
) -> None:
    """The step in its container; its messages on our stderr, or in the file ``output``."""
    with contextlib.ExitStack() as files:
        out = files.enter_context(open_output(output)) if output else sys.stderr.buffer
        code = _container(c, step, device=device, gpu=gpu, work=work, out=out, gpu_id=gpu_id)
    if code:
        killed = code - 128 if code in (137, 143) else None
        raise UploadError(failure(step, killed, code, where=step.image, output=output), step=step.name, exit=code)


def fingerprint(c, step: PlannedStep, *, work: Path) -> str | None:
    """The fingerprint the step's tool computes for it now, in its container (``--fingerprint``: nothing
    is written); None when it cannot say (the step then runs, and tells why)."""
    answer = io.BytesIO()
    try:
        code = _container(c, step, device="cpu", gpu=False, work=work, out=answer, extra=("--fingerprint",))
    except UploadError:
        return None
    return parse_fingerprint(code, answer.getvalue().decode("utf-8", "replace"))


def _container(c, step: PlannedStep, *, device: str, gpu: bool, work: Path, out, extra=(), gpu_id=None) -> int:
    """Run the step's container to its end, its stderr on ours (its stdout into ``out`` when ``extra``
    asks for an answer); its exit code."""
    import docker

    keep = os.environ.get("UPLOAD_DRIVER_KEEP_CONTAINERS", "") not in ("", "0")
    for folder in (step.out.parent, *step.rw.values()):  # bind sources must exist
        folder.mkdir(parents=True, exist_ok=True)
    with _Token(step.token) as token_file:
        s = spec(step, device=device, gpu=gpu, work=work, token_file=token_file, gpu_id=gpu_id)
        try:
            ct = c.containers.create(
                s["image"],
                [*s["command"], *extra],
                user=s["user"],
                mounts=s["mounts"],
                environment=s["environment"],
                network_mode=s["network_mode"],
                working_dir=s["working_dir"],
                labels=s["labels"],
                device_requests=s["device_requests"],
            )
        except docker.errors.APIError as exc:
            raise UploadError(
                f"Docker refused the container of step {step.name}: "
                f"{' '.join(str(exc.explanation or exc).split())[:300]}: check `upload-driver doctor`",
                step=step.name,
            ) from None
        try:
            ct.start()
            for chunk in ct.logs(stream=True, follow=True, stdout=bool(extra), stderr=not extra):
                out.write(chunk)
                out.flush()
            return ct.wait()["StatusCode"]
        except KeyboardInterrupt:
            ct.stop(timeout=5)
            raise
        finally:
            if not keep:
                with contextlib.suppress(docker.errors.APIError):
                    ct.remove(force=True)
