"""Fixtures: tiny real models built on the fly (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The files that take minutes are handed out first: the parallel test processes then end together
# instead of one of them running the longest file alone at the end (each file goes to one process).
LONGEST_FIRST = ("test_quant_formats.py", "test_packaging.py", "test_gguf.py", "test_hostile_driver.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from upload_common.sample import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory, tokenizer_dir) -> Path:
    from upload_common.sample import make_base

    return make_base(tmp_path_factory.mktemp("llama") / "base", "llama", tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="session")
def sft_output(tmp_path_factory, llama_base, tokenizer_dir) -> Path:
    from upload_common.sample import make_trainer_output

    return make_trainer_output(
        tmp_path_factory.mktemp("runs") / "sft output ünï", llama_base, kind="sft", tokenizer_dir=tokenizer_dir
    )


def tree_hash(folder: Path) -> str:
    """Names and contents of every file below ``folder``: proves an input was left untouched."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def no_finished_output(out: Path) -> bool:
    """Nothing at ``out`` and no manifest anywhere beside it."""
    return not Path(out).exists() and not list(Path(out).parent.glob("**/manifest.json"))


@pytest.fixture(scope="session", autouse=True)
def sample_cache(tmp_path_factory, worker_id) -> Path:
    """One trained sample per test run: `trained_llama` and the demo (through its cache variable, in this
    process and in those it starts) take the sample's trained base model from here. The folder is shared
    by the run's parallel test processes (make_trained_base trains once, under a lock)."""
    from upload_driver.demo import SAMPLE_CACHE_ENV

    root = tmp_path_factory.getbasetemp()
    cache = (root if worker_id == "master" else root.parent) / "sample-cache"
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SAMPLE_CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="session")
def trained_llama(tmp_path_factory, tokenizer_dir, sample_cache) -> Path:
    """The demo's sample base model: hidden 256 / intermediate 512 (so k-quants are real), briefly trained
    so top-1 means something."""
    from upload_common.sample import make_trained_base

    return make_trained_base(tmp_path_factory.mktemp("trained") / "tiny-llama", tokenizer_dir, cache=sample_cache)


BASE_ID = "acme-base/Tiny-Llama-3"
BASE_CARD = "---\nlicense: llama3.2\nlanguage:\n- en\n- de\npipeline_tag: text-generation\n---\n\n# Tiny base\n"
TRAINER_CARD = (
    "---\nlibrary_name: peft\ndatasets:\n- acme/chat-data\ntags:\n- sft\n- trl\n- unsloth\n---\n\n"
    "# Model trained with SFT.\n"
)


def put_in_hf_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay a model folder out as huggingface_hub's cache does (refs/main -> snapshots/<commit>)."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = (repo_id.encode().hex() * 40)[:40]
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


@pytest.fixture(scope="session")
def run_artifacts(tmp_path_factory, llama_base, tokenizer_dir) -> dict:
    """A whole run's artifacts made by the real tools: an SFT trainer output whose base is a Hub id
    (found in a local HF cache, with a card that names its licence), then merge-tool lora and
    merged_16bit, and gguf-tool (Q8_0, Q4_K_M) on the merged model."""
    import shutil

    from gguf_tool.core import run as gguf_run
    from merge_tool.core import run as merge_run
    from upload_common.sample import make_trainer_output

    root = tmp_path_factory.mktemp("run")
    base = root / "base-src"
    shutil.copytree(llama_base, base)
    (base / "README.md").write_text(BASE_CARD)
    trainer = make_trainer_output(
        root / "sft_output_rtx3090", llama_base, kind="sft", tokenizer_dir=tokenizer_dir, base_name=BASE_ID
    )
    (trainer / "README.md").write_text(TRAINER_CARD)
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        cache = root / "hf-cache"
        put_in_hf_cache(cache, BASE_ID, base)
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        art = root / "artifacts"
        merge_run(trainer, art / "lora", method="lora")
        merge_run(trainer, art / "merged", method="merged_16bit")
    gguf_run(
        art / "merged",
        art / "gguf",
        quants=["Q8_0", "Q4_K_M"],
        name="Tiny-Chat",
        validate_tokens=48,
        min_top1={"Q8_0": 0.0, "BF16": 0.0},  # an untrained model: near-ties flip its top-1
    )
    return {"root": root, "trainer": trainer, "lora": art / "lora", "merged": art / "merged", "gguf": art / "gguf"}


@pytest.fixture(scope="session")
def run_docs(run_artifacts) -> Path:
    """docs-tool on the run's three artifact sets, repos under the namespace alice."""
    from docs_tool.core import run as docs_run

    out = run_artifacts["root"] / "artifacts" / "docs"
    docs_run([run_artifacts[k] for k in ("lora", "merged", "gguf")], out, namespace="alice", name="Tiny-Chat")
    return out


def start_until(cmd: list[str], ready, *, env: dict | None = None, timeout: float = 120, stderr=None):
    """Start ``cmd`` and return it once ``ready()`` holds, it has ended, or ``timeout`` has passed
    (tests that interrupt a run at a chosen moment)."""
    import subprocess
    import time

    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=stderr or subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    return proc


# ------------------------------------------------------------------ the Hub server (tests/servers/hub.py)


@pytest.fixture
def hub_tokens() -> dict:
    """The tokens the Hub server knows; the first is put in HF_TOKEN. A module needing others overrides this."""
    return {"hf_hub_write_TOKEN_1": {"user": "alice", "orgs": ["acme"], "role": "write"}}


@pytest.fixture
def hub_backoff_waits() -> bool:
    """Whether huggingface_hub's own backoff sleeps are waited; by default they are skipped (fast retry
    tests). A module whose tests measure them overrides this to True."""
    return False


def point_hub_client(monkeypatch, tmp_path: Path, url: str, token: str) -> None:
    """huggingface_hub pointed at the Hub at ``url`` (HTTP, no Xet, no telemetry, ``token``, no token file), both in
    this process (the constants it read when imported) and in the processes a test starts (the environment, as a
    publishing step sees it); timeouts and retry budget at their defaults."""
    from huggingface_hub import constants

    from servers.hub import client_env

    monkeypatch.setattr(constants, "ENDPOINT", url)
    # hf_hub_url formats this template, fixed from the endpoint when huggingface_hub was imported
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    for key, value in client_env(url, token).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("UPLOAD_DRIVER_NET_TIMEOUT", raising=False)
    monkeypatch.delenv("UPLOAD_DRIVER_RETRY_BUDGET", raising=False)


@pytest.fixture
def hub(tmp_path, monkeypatch, hub_tokens, hub_backoff_waits):
    """Our Hub server with ``hub_tokens``, and huggingface_hub pointed at it (see ``point_hub_client``)."""
    import types

    from huggingface_hub.utils import _http

    from servers.hub import HubServer

    with HubServer(tmp_path / "hub-storage", tokens=hub_tokens) as server:
        point_hub_client(monkeypatch, tmp_path, server.url, next(iter(hub_tokens)))
        if not hub_backoff_waits:  # `_http` uses `time` only for the backoff sleep
            monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda s: None))
        yield server


# ------------------------------------------------------------------ hostile inputs
# (test_hostile_code.py, test_hostile_files.py)


def payload(marker: Path) -> str:
    """A module that, when imported, writes ``marker`` (with the token it sees) and defines the classes
    an auto_map can name."""
    return (
        f"import os, pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text(os.environ.get('HF_TOKEN') or 'ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    pass\n"
    )


def merge_cli(*args):
    from click.testing import CliRunner

    from merge_tool.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *needles) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def no_code_in(folder: Path) -> None:
    from upload_common import remote_code

    assert not list(folder.rglob("*.py")), sorted(p.name for p in folder.rglob("*.py"))
    assert remote_code.scan(folder) == []
    for name in remote_code.CONFIG_FILES:
        if (folder / name).is_file():
            assert not {"auto_map", "custom_pipelines"} & json.loads((folder / name).read_text()).keys()


@pytest.fixture
def trainer(tmp_path, sft_output) -> Path:
    """A copy of the SFT trainer output that a test may plant things in."""
    return Path(shutil.copytree(sft_output, tmp_path / "run"))


@pytest.fixture
def base(tmp_path, llama_base) -> Path:
    """A copy of the base model that a test may plant things in."""
    return Path(shutil.copytree(llama_base, tmp_path / "base"))


# ------------------------------------------------------------------ trainer folders written by hand
# (test_trainer_output.py, test_trainer_kind.py)

ADAPTER_BASE = "unsloth/tiny-base"


def adapter(folder: Path, *, weights: str | None = "safetensors", base: str = ADAPTER_BASE) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 4,
                "lora_alpha": 8,
                "base_model_name_or_path": base,
                "target_modules": ["q_proj", "v_proj"],
            }
        )
    )
    tensors = {"base_model.model.layers.0.q_proj.lora_A.weight": np.ones((4, 8), dtype=np.float32)}
    if weights == "safetensors":
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    elif weights == "bin":
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    return folder


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def log_history(extra: dict | None = None, steps=(100, 200, 300)) -> list[dict]:
    rows = [
        {
            "step": s,
            "epoch": s / steps[-1],
            "loss": round(2.0 / (i + 1), 3),
            "learning_rate": 1e-4 / (i + 1),
            "grad_norm": 0.5,
            **(extra or {}),
        }
        for i, s in enumerate(steps)
    ]
    rows.append({"step": steps[1], "epoch": 0.66, "eval_loss": 1.5, "eval_runtime": 2.0})
    rows.append({"step": steps[-1], "epoch": 1.0, "train_runtime": 321.5, "train_loss": 1.2, "total_flos": 1e12})
    return rows


def state(folder: Path, log=None, **extra) -> Path:
    data = {
        "global_step": 300,
        "max_steps": 300,
        "epoch": 1.0,
        "num_train_epochs": 1,
        "train_batch_size": 4,
        "best_metric": None,
        "best_model_checkpoint": None,
        "log_history": log_history() if log is None else log,
        **extra,
    }
    return write_json(folder / "trainer_state.json", data)
