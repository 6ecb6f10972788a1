"""Calibration text for the formats that fit their quantization to activations (GPTQ, AWQ).

A calibration source is a text file (paragraphs), a JSON Lines / JSON / Parquet / CSV file with a
``text`` column or chat ``messages`` (rendered with the model's chat template), a folder of such
files, or a dataset saved with ``datasets``' ``save_to_disk``. Without one, a built-in text of
mixed prose, dialogue, code and numbers is used, with a warning: text like the training data
calibrates better."""

from __future__ import annotations

import json
from pathlib import Path

from upload_common.errors import InvalidInput, Unsupported

SAMPLES = 128  # sequences of SEQ_LEN tokens at most; llm-compressor's examples use 256-512 of 2048
SEQ_LEN = 512
TABLES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TEXTS = (".txt", ".md")

BUILTIN = """\
The committee met on Tuesday to review the budget for the coming year. After a long discussion about
maintenance costs, the members agreed to repair the bridge before the spring floods and to postpone the
new library wing until the next review.

"Where did you put the keys?" she asked. "On the hook by the door, where they always are," he said, and
then, after a pause, "unless the cat knocked them off again."

def moving_average(values, window):
    total, out = 0.0, []
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out

Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. Most of it happens in the
leaves, where chlorophyll absorbs red and blue light and reflects green, which is why plants look green.

To reset the router, hold the button on the back for ten seconds until the light blinks orange, wait two
minutes, then connect again with the password printed on the label underneath.

In 1969 the first people walked on the Moon; the round trip took about eight days, and the three
astronauts spent the following three weeks in quarantine. Today a probe can reach Mars in seven months.

Question: A train leaves at 14:05 and arrives at 17:50. How long is the journey?
Answer: From 14:05 to 17:05 is 3 hours, and from 17:05 to 17:50 is 45 minutes, so 3 hours 45 minutes.

SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01'
GROUP BY customer_id HAVING SUM(amount) > 1000 ORDER BY total DESC LIMIT 20;

Dear team, thank you for the quick turnaround on the report. Two small things before we send it out: the
chart on page 4 needs axis labels, and the summary should mention the survey's response rate (38%).

La ville se réveille lentement; les boulangers ouvrent les premiers, puis les cafés, et vers huit heures
les rues se remplissent de vélos. Der Zug nach Berlin fährt heute zwanzig Minuten später ab.

A good recipe for bread needs only flour, water, salt and yeast. Mix, rest for an hour, fold, rest again,
shape the loaf, let it rise and bake it at 230 degrees for about forty minutes until it sounds hollow.
"""


def describe(source) -> str:
    return str(source) if source else "built-in text"


def texts(source, chat_template=None) -> list[str]:
    """The calibration texts of ``source`` (None: the built-in text); a bad source is a one-line error."""
    if not source:
        return _paragraphs(BUILTIN)
    path = Path(source)
    if not path.exists():
        raise InvalidInput(
            f"calibration source {path} does not exist: pass a text file, a JSON Lines/Parquet/CSV file "
            "or a dataset folder",
            path=str(path),
        )
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return _from_records(_load_saved(path), chat_template, path)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (*TEXTS, *TABLES))
        if not files:
            raise InvalidInput(
                f"calibration folder {path} holds no .txt, .md, .jsonl, .json, .parquet or .csv file", path=str(path)
            )
        return [t for f in files for t in _file_texts(f, chat_template)]
    return _file_texts(path, chat_template)


def _file_texts(path: Path, chat_template) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in TABLES:
        return _from_records(_load_table(path, TABLES[suffix]), chat_template, path)
    try:
        found = _paragraphs(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput(
            f"calibration file {path} is not UTF-8 text: pass a text, JSON Lines, Parquet or CSV file", path=str(path)
        ) from None
    if not found:
        raise InvalidInput(
            f"calibration file {path} is empty: pass text like the model's training data", path=str(path)
        )
    return found


def _paragraphs(text: str) -> list[str]:
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    return paras if len(paras) > 1 else [line for line in text.splitlines() if line.strip()]


def _load_table(path: Path, kind: str):
    datasets = _datasets()
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many kinds for a malformed file
        raise InvalidInput(
            f"cannot read calibration file {path} ({type(exc).__name__}: {str(exc)[:200]}): pass a valid file",
            path=str(path),
        ) from None


def _load_saved(path: Path):
    datasets = _datasets()
    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InvalidInput(
            f"cannot read the saved dataset {path} ({type(exc).__name__}): pass a folder written by save_to_disk",
            path=str(path),
        ) from None
    if isinstance(data, datasets.DatasetDict):
        data = data["train"] if "train" in data else next(iter(data.values()))
    return data


def _datasets():
    try:
        import datasets
    except ImportError:
        raise Unsupported(
            "reading a calibration dataset needs the datasets package: pip install "
            "'upload-driver[merge-quant]', or pass a plain text file"
        ) from None
    return datasets


def _from_records(data, chat_template, path: Path) -> list[str]:
    columns = set(data.column_names)
    key = next((k for k in ("text", "content", "messages", "conversations", "prompt") if k in columns), None)
    if key is None:
        raise InvalidInput(
            f"calibration data {path} has no text, messages or prompt column (it has {', '.join(sorted(columns))})",
            path=str(path),
        )
    out = []
    for row in data:
        value = row[key]
        if key in ("messages", "conversations"):
            value = _render_chat(value, chat_template)
        elif key == "prompt" and isinstance(row.get("completion"), str):
            value = f"{value}{row['completion']}"
        if isinstance(value, str) and value.strip():
            out.append(value)
    if not out:
        raise InvalidInput(f"calibration data {path} holds no text", path=str(path))
    return out


def _render_chat(messages, chat_template) -> str:
    if isinstance(messages, str):
        messages = json.loads(messages)
    turns = [
        {"role": m.get("role") or m.get("from"), "content": m.get("content") or m.get("value") or ""} for m in messages
    ]
    if chat_template is not None:
        return chat_template(turns)
    return "\n".join(f"{t['role']}: {t['content']}" for t in turns)


def token_samples(tokenizer, texts_: list[str], *, samples: int = SAMPLES, seq_len: int = SEQ_LEN) -> list[list[int]]:
    """The texts tokenized, joined with EOS and cut into at most ``samples`` sequences of ``seq_len``."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for t in texts_:
        stream += tokenizer(t, add_special_tokens=not stream).input_ids + ([eos] if eos is not None else [])
        if len(stream) >= samples * seq_len:
            break
    return [stream[i : i + seq_len] for i in range(0, min(len(stream), samples * seq_len), seq_len)]
