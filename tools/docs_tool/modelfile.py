"""The Ollama Modelfile docs-tool writes: FROM, TEMPLATE, PARAMETER, SYSTEM and LICENSE, each value in a form that
Ollama's Modelfile parser reads back unchanged. The TEMPLATE and stop tokens come from ``chat_template``.

How Ollama's parser reads a value (parser/parser.go): it runs to the end of the first line at which the text so far,
stripped of surrounding white space, is complete: bare text always is, ``"..."`` once it ends with a quote,
``\"\"\"...\"\"\"`` once it ends with three; the quotes are then removed. There are no escapes, and characters that are
neither printable nor white space are dropped.
"""

from __future__ import annotations

import re

from .chat_template import ollama_template

__all__ = ["ollama_template", "modelfile_text", "clean"]

# Ollama's model parameters (api.Options): the names a Modelfile PARAMETER takes.
_PARAMETERS = (
    "numa",
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "top_p",
    "min_p",
    "tfs_z",
    "temperature",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "use_mmap",
    "embedding_only",
    "stop",
)
# Parameters Ollama's Modelfile parser skips with a warning (typical_p: refused by /api/create since 0.12).
_DEPRECATED = (
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
_WHITE = " \t\r\n\v\f"


def clean(text: str) -> str:
    """What Ollama's parser keeps of a value: printable characters, tabs and line breaks (a non-breaking or other
    space becomes a plain space; other invisible characters are dropped, as Ollama would drop them)."""
    import unicodedata

    return "".join(
        ch if ch.isprintable() or ch in "\t\n\r" else " " if unicodedata.category(ch) == "Zs" else "" for ch in text
    )


_clean = clean  # the name docs_tool.core imports


def _closed_early(text: str, quote: str) -> bool:
    """A line of ``text`` before its end already completes a value opened with ``quote``."""
    return any(text[:i].rstrip(_WHITE).endswith(quote) for i, ch in enumerate(text) if ch in "\r\n")


def _reads_back(form: str, text: str) -> bool:
    """Ollama's parser reads ``text`` written in ``form`` (bare, quoted or triple) as ``text``."""
    if not all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return False
    if form == "triple":
        return not _closed_early(text, '"""')
    if form == "quoted":  # unless its quotes make three, which open a triple-quoted value
        return not ('"' + text).startswith('"""') and text != '"' and not _closed_early(text, '"')
    return bool(text) and text == text.strip(_WHITE) and not re.search(r"[\r\n]", text) and text[0] != '"'


def _value(text: str, *, prefer: str) -> str | None:
    """``text`` written so that Ollama's parser reads it back unchanged, or None when no form does."""
    forms = {"triple": '"""' + text + '"""', "quoted": '"' + text + '"', "bare": text}
    for form in [prefer] + [f for f in ("quoted", "triple", "bare") if f != prefer]:
        if _reads_back(form, text):
            return forms[form]
    return None


def _format_param(name: str, value) -> str:
    from upload_common.errors import InvalidInput, Unsupported

    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidInput(f"Modelfile PARAMETER {name}: {value!r} is not a string, number or boolean")
    if not text:
        raise InvalidInput(f"Modelfile PARAMETER {name}: empty value")
    written = _value(clean(text), prefer="quoted" if isinstance(value, str) else "bare")
    if written is None or clean(text) != text:
        raise Unsupported(f"Modelfile PARAMETER {name}: {text!r} cannot be written in a Modelfile")
    return f"PARAMETER {name} {written}"


def _as_list(v) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _from_line(gguf_file: str) -> str:
    from pathlib import PurePosixPath

    from upload_common.errors import InvalidInput, Unsupported

    p = PurePosixPath(str(gguf_file).replace("\\", "/"))
    if not str(gguf_file) or p.is_absolute() or ".." in p.parts or any(c in str(gguf_file) for c in "\r\n"):
        raise InvalidInput(f"Modelfile FROM: {gguf_file!r} is not a file name relative to the Modelfile")
    written = _value("./" + str(p), prefer="bare")
    if written is None:
        raise Unsupported(f"Modelfile FROM: {gguf_file!r} cannot be written in a Modelfile")
    return f"FROM {written}"


def _template_line(template: str) -> str:
    from upload_common.errors import InvalidInput, Unsupported

    if clean(template) != template:
        raise InvalidInput("the Ollama template holds control characters a Modelfile cannot carry")
    value = _value(template, prefer="triple")
    if value is None:
        raise Unsupported('the Ollama template has a line ending with """, which a Modelfile cannot hold')
    return f"TEMPLATE {value}"


def _parameter_lines(stop: list[str], parameters: dict | None) -> list[str]:
    from upload_common.errors import InvalidInput

    params = dict(parameters or {})
    stops = list(dict.fromkeys([*(stop or []), *_as_list(params.pop("stop", None))]))
    lines = [_format_param("stop", s) for s in stops if s]
    for name, value in params.items():
        if name in _DEPRECATED:
            raise InvalidInput(f"Modelfile PARAMETER: Ollama no longer takes {name!r} (it would ignore it)")
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)) or name not in _PARAMETERS:
            raise InvalidInput(f"Modelfile PARAMETER: {name!r} is not an Ollama parameter")
        lines.extend(_format_param(name, v) for v in _as_list(value))
    return lines


def _text_line(key: str, text: str) -> str:
    from upload_common.errors import Unsupported

    value = _value(clean(text), prefer="triple")
    if value is None:
        raise Unsupported(f'Modelfile {key}: the text has a line that ends with """, which a Modelfile cannot hold')
    return f"{key} {value}"


def modelfile_text(
    gguf_file: str,
    *,
    template: str | None,
    stop: list[str],
    system: str | None = None,
    license_text: str | None = None,
    parameters: dict | None = None,
) -> str:
    """The Modelfile text: FROM ./<gguf_file>, TEMPLATE, PARAMETER stop/..., SYSTEM, LICENSE.

    A Modelfile has no escapes: a value in triple quotes ends at the first line that ends with three quotes. A value
    that no form can hold raises Unsupported. Characters Ollama's parser drops (control and invisible format
    characters) are dropped here, unusual spaces become plain spaces."""
    lines = [_from_line(gguf_file)]
    if template:
        lines.append(_template_line(template))
    lines.extend(_parameter_lines(stop, parameters))
    lines.extend(
        _text_line(key, text) for key, text in (("SYSTEM", system), ("LICENSE", license_text)) if text is not None
    )
    return "\n".join(lines) + "\n"
