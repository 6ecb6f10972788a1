"""Running llama.cpp's converter (convert_hf_to_gguf.py / convert_lora_to_gguf.py) as a process,
with its own gguf-py, and turning its known failures into one-line errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from upload_common.errors import InvalidInput, Unsupported

from .llama_tree import converter

_KNOWN = [  # (pattern in the converter's output, error class, message; {0} is the match)
    (r"Model (\S+) is not supported", Unsupported,
     "architecture {0} is not supported by this llama.cpp converter: it cannot be made into GGUF by this version"),
    (r"Architecture '?([\w]+)'? not supported", Unsupported,
     "architecture {0} is not supported by this llama.cpp converter"),
    (r"(BPE pre-tokenizer was not recognized)", Unsupported,
     "the tokenizer's pre-tokenizer is not recognized by this llama.cpp converter ({0}): the GGUF would split "
     "text differently; use a llama.cpp release that knows this model"),
    (r"(FileNotFoundError: .*tokenizer[^\n]*)", InvalidInput,
     "the model folder has no usable tokenizer ({0}): copy the tokenizer files into it"),
    (r"(No such file or directory: '[^']*config\.json')", InvalidInput,
     "the model folder has no config.json ({0}): pass a Hugging Face model folder"),
    (r"(SafetensorError[^\n]*|Error while deserializing[^\n]*|HeaderTooLarge|MetadataIncompleteBuffer)", InvalidInput,
     "a safetensors file of the model is corrupt ({0}): re-copy or re-save the model"),
]


def _env() -> dict:
    tree = converter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "gguf-py"), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("NO_LOCAL_GGUF", "")
    return env


def run_converter(script: str, args: list[str], log=lambda line: None) -> None:
    """Run one of the converter scripts; stream its log lines to ``log``; map known failures."""
    cmd = [sys.executable, str(converter() / script), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        log(line.rstrip())
    if proc.wait() == 0:
        return
    text = "\n".join(lines[-200:])
    for pattern, cls, message in _KNOWN:
        m = re.search(pattern, text)
        if m:
            raise cls(message.format(m.group(1)))
    last = next((l for l in reversed(lines) if l.strip()), "no output")
    raise InvalidInput(f"llama.cpp's converter failed ({last.strip()[:200]}): set UPLOAD_DRIVER_DEBUG=1 and rerun "
                       "to see its whole log", log_tail=lines[-30:])


def convert_model(model_dir: Path, outfile: Path, outtype: str, *, vocab_only: bool = False,
                  name: str | None = None, metadata: Path | None = None, split_max_size: str | None = None,
                  log=lambda line: None) -> None:
    args = [str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    if vocab_only:
        args.append("--vocab-only")
    if name:
        args += ["--model-name", name]
    if metadata:
        args += ["--metadata", str(metadata)]
    if split_max_size:
        args += ["--split-max-size", split_max_size]
    run_converter("convert_hf_to_gguf.py", args, log)


def convert_lora(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str, log=lambda line: None) -> None:
    run_converter("convert_lora_to_gguf.py",
                  [str(adapter_dir), "--base", str(base_dir), "--outfile", str(outfile), "--outtype", outtype], log)
