"""Running llama.cpp's converter (convert_hf_to_gguf.py / convert_lora_to_gguf.py) as a process,
with its own gguf-py, and turning its known failures into one-line errors.

The converter never runs a model's own code and never sees a secret: a folder that refers to code
(auto_map, custom_pipelines) is refused before it starts; it runs through ``gguf_tool.launch``, which
makes transformers refuse remote code whatever the converter asks (it passes trust_remote_code=True
for several architectures); and its environment has no token (HF_TOKEN and the like removed,
HF_TOKEN_PATH and HF_HOME in an empty scratch folder), is offline (HF_HUB_OFFLINE=1), and its working
folder is the converter's own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from upload_common.errors import InvalidInput, Unsupported
from upload_common.remote_code import REFUSED, refuse_code

from .llama_tree import converter

TOOL = "gguf-tool"
# variables that may hold a credential: none is needed to convert a local folder
_SECRET = re.compile(r"(^|_)(TOKENS?|SECRETS?|PASSWORD|PASSWD|CREDENTIALS?|API_?KEY|ACCESS_KEY|AUTH)(_|$)", re.I)
_HF_AUTH = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_STORED_TOKENS_PATH",
    "HF_OIDC_RESOURCE",
    "HF_OIDC_ID_TOKEN",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_MODULES_CACHE",
)

_KNOWN = [  # (pattern in the converter's output, error class, message; {0} is the match)
    (
        f"({re.escape(REFUSED)})",
        InvalidInput,
        "the model needs its own code to be converted, which transformers refused to load ({0}): gguf-tool never runs "
        "code from a model folder; use a model whose architecture and tokenizer transformers ships",
    ),
    (
        r"Model (\S+) is not supported",
        Unsupported,
        "architecture {0} is not supported by this llama.cpp converter: it cannot be made into GGUF by this version",
    ),
    (
        r"Architecture '?([\w]+)'? not supported",
        Unsupported,
        "architecture {0} is not supported by this llama.cpp converter",
    ),
    (
        r"(BPE pre-tokenizer was not recognized)",
        Unsupported,
        "the tokenizer's pre-tokenizer is not recognized by this llama.cpp converter ({0}): the GGUF would split "
        "text differently; use a llama.cpp release that knows this model",
    ),
    (
        r"(FileNotFoundError: .*tokenizer[^\n]*)",
        InvalidInput,
        "the model folder has no usable tokenizer ({0}): copy the tokenizer files into it",
    ),
    (
        r"(No such file or directory: '[^']*config\.json')",
        InvalidInput,
        "the model folder has no config.json ({0}): pass a Hugging Face model folder",
    ),
    (
        r"(SafetensorError[^\n]*|Error while deserializing[^\n]*|HeaderTooLarge|MetadataIncompleteBuffer)",
        InvalidInput,
        "a safetensors file of the model is corrupt ({0}): re-copy or re-save the model",
    ),
]


def converter_env(parent: dict, tree: Path, scratch: Path) -> dict:
    """The converter's environment: ``parent`` without credentials, offline, with the Hugging Face
    home and token file in ``scratch`` (an empty folder: no token file there), gguf-py first on the path."""
    env = {k: v for k, v in parent.items() if not _SECRET.search(k) and k not in _HF_AUTH}
    hf_home = Path(scratch) / "hf-home"
    env.update(
        HF_HOME=str(hf_home),
        HF_TOKEN_PATH=str(hf_home / "token"),
        HF_MODULES_CACHE=str(hf_home / "modules"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(Path(tree) / "gguf-py"), parent.get("PYTHONPATH")) if p),
    )
    env.setdefault("NO_LOCAL_GGUF", "")
    return env


def run_converter(script: str, args: list[str], log=lambda line: None, launch: tuple[str, ...] = ()) -> None:
    """Run one of the converter scripts (through gguf_tool.launch, with its own ``launch`` flags);
    stream its log lines to ``log``; map known failures. Paths in ``args`` must be absolute: it runs in
    the converter's folder."""
    tree = converter()
    cmd = [sys.executable, "-m", "gguf_tool.launch", *launch, str(tree / script), *args]
    lines = []
    with (
        tempfile.TemporaryDirectory(prefix="gguf-tool-env-") as scratch,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tree,
            env=converter_env(dict(os.environ), tree, Path(scratch)),
        ) as proc,
    ):
        for line in proc.stdout:
            lines.append(line.rstrip())
            log(line.rstrip())
        code = proc.wait()
    if code == 0:
        return
    text = "\n".join(lines[-200:])
    for pattern, cls, message in _KNOWN:
        m = re.search(pattern, text)
        if m:
            raise cls(message.format(m.group(1)))
    last = next((line for line in reversed(lines) if line.strip()), "no output")
    raise InvalidInput(
        f"llama.cpp's converter failed ({last.strip()[:200]}): set UPLOAD_DRIVER_DEBUG=1 and rerun "
        "to see its whole log",
        log_tail=lines[-30:],
    )


def _abs(path) -> str:
    return os.path.abspath(path)


def convert_model(
    model_dir: Path,
    outfile: Path,
    outtype: str,
    *,
    vocab_only: bool = False,
    name: str | None = None,
    metadata: Path | None = None,
    split_max_size: str | None = None,
    merge: tuple[Path, Path] | None = None,
    log=lambda line: None,
) -> None:
    """``merge``: (base folder, adapter folder) when ``model_dir`` holds a deferred merge's recipe instead
    of weights; the converter then reads the merged tensors as they are computed."""
    refuse_code(model_dir, TOOL)
    args = [_abs(model_dir), "--outfile", _abs(outfile), "--outtype", outtype]
    if vocab_only:
        args.append("--vocab-only")
    if name:
        args += ["--model-name", name]
    if metadata:
        args += ["--metadata", _abs(metadata)]
    if split_max_size:
        args += ["--split-max-size", split_max_size]
    launch = ()
    if merge:
        refuse_code(merge[0], TOOL, "base model folder")
        launch = ("--merge-recipe", _abs(model_dir), "--merge-base", _abs(merge[0]), "--merge-adapter", _abs(merge[1]))
    run_converter("convert_hf_to_gguf.py", args, log, launch)


def convert_lora(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str, log=lambda line: None) -> None:
    refuse_code(adapter_dir, TOOL, "adapter folder")
    refuse_code(base_dir, TOOL, "base model folder")
    run_converter(
        "convert_lora_to_gguf.py",
        [_abs(adapter_dir), "--base", _abs(base_dir), "--outfile", _abs(outfile), "--outtype", outtype],
        log,
    )
