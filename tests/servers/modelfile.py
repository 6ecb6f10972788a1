"""Ollama's Modelfile, as the tests and the Ollama server of our own handle it (standard library only).

``parse_modelfile`` reads a Modelfile the way Ollama's parser (parser/parser.go) does: command names in any case,
``#`` comments, no escapes; a value runs to the end of the first line at which the text so far, stripped of white
space, is complete (bare text always is, ``"..."`` once it ends with a quote, ``\"\"\"...\"\"\"`` once it ends with
three), and characters that are neither printable nor white space are dropped. ``show_modelfile`` is the text
``ollama show --modelfile`` prints; ``PARAMS`` are the model parameters and the JSON types /api/create takes.
"""

from __future__ import annotations

import json
import re

__all__ = ["PARAMS", "DEPRECATED", "parse_modelfile", "show_modelfile", "parameters_text", "go_value"]

# Ollama's model parameters (api.Options and the runner's) and the JSON types they take.
PARAMS = {
    **dict.fromkeys(
        (
            "numa",
            "low_vram",
            "f16_kv",
            "logits_all",
            "vocab_only",
            "use_mmap",
            "use_mlock",
            "embedding_only",
            "penalize_newline",
        ),
        bool,
    ),
    **dict.fromkeys(
        (
            "num_ctx",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "num_thread",
            "num_keep",
            "seed",
            "num_predict",
            "top_k",
            "repeat_last_n",
            "mirostat",
        ),
        int,
    ),
    **dict.fromkeys(
        (
            "top_p",
            "min_p",
            "tfs_z",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "mirostat_tau",
            "mirostat_eta",
        ),
        float,
    ),
    "stop": list,
}
# Parameters Ollama's Modelfile parser skips with a warning (typical_p: refused by /api/create since 0.12).
DEPRECATED = (
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "typical_p",
)
_COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
_ROLES = ("system", "user", "assistant")
_WHITE = " \t\r\n\v\f"
_SKIP = re.compile(r"(?:[ \t\r\n]+|#[^\r\n]*)*")
_HEAD = re.compile(r"([A-Za-z]+)[ \t]")
_NAMED = {"parameter": re.compile(r"([A-Za-z0-9_]+)[ \t]"), "message": re.compile(r"([A-Za-z]+)[ \t]")}


def _invalid(message: str) -> Exception:
    from upload_common.errors import InvalidInput

    return InvalidInput(message)


# ------------------------------------------------------------------------------------------------------- reading


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def _value(text: str, pos: int) -> tuple[str, int]:
    """The value starting at ``pos``, and where the next command may start."""

    def kept(end: int) -> str:
        return "".join(ch for ch in text[pos:end] if ch.isprintable() or ch in " \t\r\n").strip(_WHITE)

    for m in re.finditer(r"[\r\n]", text[pos:]):
        value, ok = _unquote(kept(pos + m.start()))
        if ok:
            return value, pos + m.end()
    value, ok = _unquote(kept(len(text)))
    if not ok:
        raise _invalid("Modelfile: unexpected end of file inside a quoted value")
    return value, len(text)


def _command(text: str, pos: int) -> tuple[str, int]:
    """The command at ``pos`` ("model" for FROM, the parameter's name for PARAMETER, "message" with its role), and
    where its value starts."""
    m = _HEAD.match(text, pos)
    if not m or m[1].lower() not in _COMMANDS:
        raise _invalid(f"Modelfile: {text[pos : pos + 20]!r}: command must be one of {', '.join(_COMMANDS)}")
    name = m[1].lower()
    if name not in _NAMED:
        return ("model" if name == "from" else name), m.end()
    n = _NAMED[name].match(text, m.end())
    if not n:
        raise _invalid("Modelfile: unexpected end of a PARAMETER or MESSAGE name")
    if name == "message" and n[1] not in _ROLES:
        raise _invalid('Modelfile: message role must be one of "system", "user", "assistant"')
    return (f"message {n[1]}" if name == "message" else n[1]), n.end()


def parse_commands(text: str) -> list[tuple[str, str]]:
    """[(command, value)] in file order, as Ollama's parser reads them."""
    text, pos, cmds = text.lstrip("\ufeff"), 0, []
    while True:
        pos = _SKIP.match(text, pos).end()
        if pos >= len(text):
            return cmds
        name, pos = _command(text, pos)
        value, pos = _value(text, pos)
        cmds.append((name, value))


def _typed(name: str, raw: str):
    kind = PARAMS[name]
    booleans = {
        **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
        **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
    }
    try:
        return booleans[raw] if kind is bool else kind(raw)
    except (KeyError, ValueError):
        raise _invalid(f"Modelfile PARAMETER {name}: invalid {kind.__name__} value {raw!r}") from None


def _add(out: dict, name: str, value: str) -> None:
    if name == "model":
        out["from"] = value
    elif name == "license":
        out["license"] = value if out["license"] is None else [*_as_list(out["license"]), value]
    elif name.startswith("message "):
        out["messages"].append({"role": name[len("message ") :], "content": value})
    elif name in _COMMANDS:
        out[name] = value
    elif name in DEPRECATED:
        out["deprecated"].append(name)
    elif name not in PARAMS:
        raise _invalid(f"Modelfile PARAMETER: unknown parameter {name!r}")
    elif PARAMS[name] is list:
        out["parameters"].setdefault(name, []).append(value)
    else:
        out["parameters"][name] = _typed(name, value)


def parse_modelfile(text: str) -> dict:
    """{"from", "template", "system", "license" (a list when several LICENSE lines), "parameters" ({name: typed
    value}, "stop" a list, as /api/create takes them), "messages" ([{role, content}]), "deprecated" ([parameter
    names Ollama skips])}; other commands by their lower-case name."""
    out = {
        "from": None,
        "template": None,
        "system": None,
        "license": None,
        "parameters": {},
        "messages": [],
        "deprecated": [],
    }
    for name, value in parse_commands(text):
        _add(out, name, value)
    if out["from"] is None:
        raise _invalid("Modelfile: no FROM line")
    return out


# ------------------------------------------------------------------------------------------------------- writing


def _as_list(v) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, list) else [v]


def go_value(v, *, bare: bool = False) -> str:
    """A parameter value as Go's %#v prints the JSON-decoded value (strings quoted), or bare for a Modelfile."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e21 else repr(float(v))
    return str(v) if bare else json.dumps(str(v), ensure_ascii=False)


def parameters_text(params: dict) -> str:
    """Ollama's /api/show "parameters": one ``%-30s %#v`` line per value."""
    return "\n".join(f"{k:<30} {go_value(v)}" for k, vals in sorted(params.items()) for v in _as_list(vals))


def _quote(s: str) -> str:  # Ollama's parser.quote
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s


def show_modelfile(full: str, fields: dict, files: list[tuple[str, str]]) -> str:
    """What ``ollama show --modelfile`` prints for the model ``full``: ``files`` are (FROM or ADAPTER, blob path);
    ``fields`` what the create requests sent (template, system, parameters, messages, license)."""
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {full}",
        "",
    ]
    lines += [f"{command} {path}" for command, path in files]
    lines.append(f"TEMPLATE {_quote(fields.get('template') or '{{ .Prompt }}')}")
    if fields.get("system"):
        lines.append(f"SYSTEM {_quote(fields['system'])}")
    lines += [
        f"PARAMETER {k} {_quote(go_value(v, bare=True))}"
        for k, vals in sorted((fields.get("parameters") or {}).items())
        for v in _as_list(vals)
    ]
    lines += [f"MESSAGE {m.get('role')} {_quote(str(m.get('content', '')))}" for m in fields.get("messages") or []]
    lines += [f"LICENSE {_quote(text)}" for text in _as_list(fields.get("license"))]
    return "\n".join(lines) + "\n"
