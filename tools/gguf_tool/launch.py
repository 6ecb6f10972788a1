"""Run one of llama.cpp's converter scripts with transformers unable to run a model's own code:
``python -m gguf_tool.launch SCRIPT ARGS...``. The converter asks for ``trust_remote_code=True`` for
several architectures; here that is refused (upload_common.remote_code.forbid_in_process) before the
script runs, in the same process, as its ``__main__``.

``python -m gguf_tool.launch --merge-recipe DIR --merge-base DIR --merge-adapter DIR SCRIPT ARGS...``:
the converter reads the model's tensors from the merge of that adapter into that base, by the recipe
in that folder (``gguf_tool.merge_hook``), instead of from safetensors files."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

MERGE_FLAGS = ("--merge-recipe", "--merge-base", "--merge-adapter")


def main(argv: list[str]) -> None:
    from upload_common.remote_code import forbid_in_process

    merge = {}
    while argv and argv[0] in MERGE_FLAGS:
        merge[argv[0]], argv = Path(argv[1]), argv[2:]
    script = Path(argv[0]).resolve()
    forbid_in_process()
    sys.argv = [str(script), *argv[1:]]
    sys.path[0] = str(script.parent)  # as `python SCRIPT` would have it: the converter imports from there
    if merge:
        from .merge_hook import hook_converter

        hook_converter(*(merge[flag] for flag in MERGE_FLAGS))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
