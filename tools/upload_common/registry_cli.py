"""What the images, compose and the docs read from the registry of sets (``upload_common.sets``), so a
new row needs no edit there. Standard library only: the image build runs it on the host without the
project installed (``PYTHONPATH=tools python3 -m upload_common.registry_cli ...``).

    python -m upload_common.registry_cli extras TOOL        the extras TOOL needs, comma-separated
    python -m upload_common.registry_cli extras --images    the extras of every tool image, comma-separated
    python -m upload_common.registry_cli architecture [--write FILE]
                                                            the registry's section of docs/architecture.md
                                                            (--write: replace it in FILE)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .sets import SETS, SetSpec

# The tools that make no set, and the extra each needs; the others need their rows' extras.
OTHER_TOOLS = {"docs-tool": "docs", "hf-push-tool": "push"}
DRIVER_EXTRA = "driver"

BEGIN = "<!-- registry: begin (generated; do not edit by hand) -->"
END = "<!-- registry: end -->"
REGENERATE = ".venv/bin/python -m upload_common.registry_cli architecture --write docs/architecture.md"


def tools() -> list[str]:
    """Every tool with an image, in pipeline order: the set-making tools in registry order, then the others."""
    return list(dict.fromkeys(s.tool for s in SETS.values())) + list(OTHER_TOOLS)


def extras(tool: str) -> list[str]:
    """The extras ``tool`` needs: the union of its rows' extras (registry order), or its fixed one."""
    if tool == "upload-driver":
        return [DRIVER_EXTRA]
    if tool in OTHER_TOOLS:
        return [OTHER_TOOLS[tool]]
    found = list(dict.fromkeys(s.extra for s in SETS.values() if s.tool == tool))
    if not found:
        raise SystemExit(f"registry_cli: unknown tool {tool!r}: choose one of {', '.join(tools())}, upload-driver")
    return found


def image_extras() -> list[str]:
    """The extras every tool image installs, together (what a wheelhouse for the images must hold)."""
    return list(dict.fromkeys(e for t in tools() for e in extras(t)))


def _consumes(s: SetSpec) -> str:
    inputs = [] if s.consumes else ["the adapter"]
    if s.needs_base:
        inputs.append("the base")
    inputs += [f"`{c}`" for c in s.consumes]
    if s.calibration:
        inputs.append("calibration text")
    return ", ".join(inputs)


def _made_by(s: SetSpec) -> str:
    return f"{s.tool} `--method {s.name}` (`{s.module}`)" if s.module else s.tool


def section() -> str:
    """The registry's section of docs/architecture.md, markers included."""
    rows = [
        f"| `{s.name}` | {_made_by(s)} | {_consumes(s)} | {'yes' if s.gpu else 'no'} | `[{s.extra}]` | "
        f"`{s.publish.suffix or '(none)'}` |"
        for s in SETS.values()
    ]
    made = ", ".join(f"`{n}`" for n in SETS)
    image_rows = [f"| {t} | `{','.join(extras(t))}` |" for t in tools()] + [f"| upload-driver | `{DRIVER_EXTRA}` |"]
    return "\n".join(
        [
            BEGIN,
            "## The sets and the steps (from the registry)",
            "Generated from `tools/upload_common/sets.py`; after changing a row, regenerate it with",
            f"`{REGENERATE}` (tests/test_import_graph.py fails until the committed text matches).",
            "",
            "| set | made by | consumes | GPU | extra | repo suffix |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"docs-tool reads the step manifests of the sets made ({made}) and writes the cards and the upload",
            "manifest; hf-push-tool reads docs-tool's output and the sets' folders and publishes them. A step",
            "runs after the steps whose sets it consumes.",
            "",
            "Each image installs its tool's extras (the union of its rows' extras; images/build.sh asks",
            "`python -m upload_common.registry_cli extras TOOL`):",
            "",
            "| tool | extras |",
            "|---|---|",
            *image_rows,
            "",
            "The import rule (tests/test_import_graph.py): a tool imports `upload_common` and third-party",
            "libraries, never another tool; the driver imports `upload_common` only and runs the tools as",
            "processes or images; `upload_common` imports no tool. Every third-party import of a tool (and of",
            "the `upload_common` code it reaches) is installed by that tool's extras.",
            END,
        ]
    )


def replace_section(text: str) -> str:
    """``text`` (docs/architecture.md) with its registry section replaced (appended when it has none)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + section() + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + section() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upload_common.registry_cli", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extras", help="the extras a tool needs, comma-separated")
    ex.add_argument("tool", nargs="?")
    ex.add_argument("--images", action="store_true", help="the extras of every tool image")
    arch = sub.add_parser("architecture", help="the registry's section of docs/architecture.md")
    arch.add_argument("--write", metavar="FILE", help="replace the section in FILE")
    args = parser.parse_args(argv)
    if args.command == "extras":
        if bool(args.tool) == args.images:
            parser.error("extras: name one TOOL or --images")
        print(",".join(image_extras() if args.images else extras(args.tool)))
    elif args.write:
        path = Path(args.write)
        path.write_text(replace_section(path.read_text()))
    else:
        print(section())
    return 0


if __name__ == "__main__":
    sys.exit(main())
