"""Run one of llama.cpp's converter scripts with transformers unable to run a model's own code:
``python -m gguf_tool.launch SCRIPT ARGS...``. The converter asks for ``trust_remote_code=True`` for
several architectures; here that is refused (upload_common.remote_code.forbid_in_process) before the
script runs, in the same process, as its ``__main__``."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    from upload_common.remote_code import forbid_in_process

    script = Path(argv[0]).resolve()
    forbid_in_process()
    sys.argv = [str(script), *argv[1:]]
    sys.path[0] = str(script.parent)  # as `python SCRIPT` would have it: the converter imports from there
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
