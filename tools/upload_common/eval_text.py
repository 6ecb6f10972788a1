"""The text an export is checked on: the built-in one (prose, code, numbers, and chat turns rendered with
the model's own template, about 1,500 tokens for a Llama 3 tokenizer) or the user's own file, and its
tokens cut into the equal chunks the models see (each chunk a fresh context, as llama-perplexity
evaluates a text: the model's beginning-of-text token starts every chunk)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput, UsageError

CHUNK_TOKENS = 512  # a context llama.cpp and every model here can hold; long texts are cut into such chunks
MAX_FILE_BYTES = 8 << 20

PROSE = (
    "The old lighthouse keeper climbed the stairs every evening at dusk. He trimmed the wick, wound the "
    "clockwork and watched the ships pass far out at sea. One winter night a storm broke the glass, and he "
    "kept the lamp burning with his own hands until morning. When the harbour master asked him why, he "
    "answered that a light is only useful if it never goes out.\n\n"
    "Bread is older than writing. The first loaves were flat cakes of crushed grain baked on hot stones; "
    "leavened bread came later, when someone left a dough long enough for wild yeast to settle in it. A "
    "baker today still relies on the same microbes, feeding a sourdough starter with flour and water and "
    "keeping it warm, so that the gas it makes is trapped by the gluten and the loaf rises in the oven.\n\n"
    "In the spring of that year the river rose higher than anyone in the valley could remember. Farmers "
    "moved their animals to the hills, the school became a shelter, and volunteers filled sandbags through "
    "the night. By the time the water went down, the town had learned which streets flooded first and "
    "which bridges held, and the council drew a new map that every household still keeps by the door.\n\n"
    "Photosynthesis turns light into chemistry. Inside the chloroplasts of a leaf, chlorophyll absorbs red "
    "and blue light and uses its energy to split water, releasing oxygen; the electrons it frees drive the "
    "enzymes that fix carbon dioxide into sugar. A single large tree can release enough oxygen in a season "
    "for several people, while storing carbon in its wood for centuries.\n\n"
)

CODE = '''Here is a small Python module and how to run it:

```python
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    x: float
    y: float

    def distance(self, other: "Point") -> float:
        return ((self.x - other.x) ** 2 + (self.y - other.y) ** 2) ** 0.5


def closest(points: list[Point], target: Point) -> Point:
    """The point nearest to target; ties keep the first one."""
    if not points:
        raise ValueError("no points given")
    return min(points, key=target.distance)


if __name__ == "__main__":
    pts = [Point(0, 0), Point(3, 4), Point(-1, 2)]
    print(closest(pts, Point(2, 2)))
```

```bash
python -m venv .venv && . .venv/bin/activate
python closest.py   # prints Point(x=3, y=4)
```

'''

NUMBERS = (
    "Quarterly figures (in thousands): Q1 1,204.5; Q2 1,318.0; Q3 987.25; Q4 1,442.75; total 4,952.5, "
    "an average of 1,238.125 per quarter. Growth from Q3 to Q4 was 46.1%. The invoice dated 2024-03-17 lists "
    "12 items at $19.99, 3 at $149.00 and 1 at $1,250.00, so 12 x 19.99 + 3 x 149 + 1250 = 1,936.88. "
    "Pi is about 3.14159265, e is about 2.71828, and the square root of 2 is 1.41421356. A marathon is "
    "42.195 km; at 5:30 per kilometre it takes 3 h 52 min 4 s. Binary 101101 is 45, hex 0x2F is 47, and "
    "2^16 = 65,536.\n\n"
)

CHAT = (
    {"role": "user", "content": "Can you explain what a hash table is, in two sentences?"},
    {
        "role": "assistant",
        "content": "A hash table stores values under keys and finds them by turning each key into an index "
        "with a hash function. Lookups, inserts and deletes take constant time on average, as long as "
        "collisions are rare.",
    },
    {"role": "user", "content": "Write a haiku about the sea at night."},
    {"role": "assistant", "content": "Black water breathing,\nthe moon unrolls a silver road,\nno ship walks on it."},
    {"role": "user", "content": "What is 17 times 23? Show the steps."},
    {"role": "assistant", "content": "17 x 23 = 17 x 20 + 17 x 3 = 340 + 51 = 391."},
)


@dataclass(frozen=True)
class EvalText:
    """The text and where it came from (``source``: "built-in" or the file's name; ``sha256`` of the text)."""

    text: str
    source: str
    sha256: str

    def describe(self) -> dict:
        return {"source": self.source, "sha256": self.sha256}


def built_in(tokenizer) -> EvalText:
    """The built-in text; its chat turns rendered with the tokenizer's chat template (transformers' sandboxed
    renderer), or as plain "User:"/"Assistant:" lines when the tokenizer has none."""
    chat = None
    if getattr(tokenizer, "chat_template", None):
        try:
            chat = tokenizer.apply_chat_template(list(CHAT), tokenize=False)
        except Exception:  # noqa: BLE001 - a template that cannot render this conversation: plain turns instead
            chat = None
    if chat is None:
        chat = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in CHAT)
    return _described(PROSE + CODE + NUMBERS + chat, "built-in: prose, code, numbers, chat turns")


def from_file(path: Path) -> EvalText:
    """The user's text file (UTF-8, not empty, at most 8 MiB)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--eval-text {path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InvalidInput(f"--eval-text {path}: over {MAX_FILE_BYTES >> 20} MiB; a few thousand tokens are enough")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"--eval-text {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise InvalidInput(f"--eval-text {path} is empty: give a text of at least a few hundred words")
    return _described(text, path.name)


def _described(text: str, source: str) -> EvalText:
    return EvalText(text=text, source=source, sha256=hashlib.sha256(text.encode()).hexdigest())


def chunks(ids: list[int], bos: int | None, size: int = CHUNK_TOKENS) -> list[list[int]]:
    """``ids`` cut into equal chunks of at most ``size`` tokens, each starting with ``bos`` when the
    tokenization does (the remainder of an uneven cut, fewer tokens than there are chunks, is dropped)."""
    lead = [bos] if bos is not None and ids[:1] == [bos] else []
    body = ids[len(lead) :]
    if not body:
        return [list(ids)] if ids else []
    count = math.ceil(len(body) / (size - len(lead)))
    each = len(body) // count
    return [lead + body[i * each : (i + 1) * each] for i in range(count)]
