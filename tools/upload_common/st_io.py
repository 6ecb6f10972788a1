"""Safetensors reading and writing in bounded memory.

Reading opens the file per tensor: safetensors memory-maps the whole file, and pages of a mapping
that stays open count in the process's resident memory, so closing after each tensor keeps the
footprint at one tensor. Writing streams: the header is computed from the planned shapes, then each
tensor's bytes are checked, appended and hashed in a chain of threads (``block_writer``). The
safetensors library has no incremental writer, so the (small, documented) file layout is written here
by hand; every file is read back with the library in the tests.

No NaN or infinity is ever written: every floating block is checked as it streams
(``NonFiniteTensor``, naming the tensor), and ``check_finite`` refuses an input file holding one.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

from .block_writer import write_blocks
from .errors import InputNotFound, InvalidInput, UploadError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

DTYPES = {  # torch dtype name -> safetensors dtype code
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}
CODES = {v: k for k, v in DTYPES.items()}
# safetensors dtype -> (unsigned integer of its width, its exponent bits): the types checked for NaN/infinity
EXPONENT_BITS = {
    "F64": ("uint64", 0x7FF0000000000000),
    "F32": ("uint32", 0x7F800000),
    "F16": ("uint16", 0x7C00),
    "BF16": ("uint16", 0x7F80),
}
ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def read_header(file: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file size."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100 << 20:
                raise ValueError("header length beyond end of file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise InvalidInput(
            f"{file} is not a readable safetensors file ({exc}): re-copy or re-save it", path=str(file)
        ) from None
    if 8 + n + end > size:
        raise InvalidInput(
            f"{file} is truncated ({size} bytes, header promises {8 + n + end}): re-copy it", path=str(file)
        )
    return header


def model_tensor_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> file, from ``model.safetensors`` or its sharded index."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise InvalidInput(f"{index} is not a valid shard index ({exc})", path=str(index)) from None
        return {name: model_dir / fname for name, fname in weight_map.items()}
    single = model_dir / SINGLE_NAME
    if single.is_file():
        return {name: single for name in read_header(single) if name != "__metadata__"}
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise InvalidInput(
            f"{model_dir} holds only pickle weights (.bin): re-save the base with "
            "safe_serialization=True, or pass a safetensors base with --base",
            path=str(model_dir),
        )
    raise InputNotFound(f"no {SINGLE_NAME} or {INDEX_NAME} in {model_dir}: pass a model folder", path=str(model_dir))


def model_specs(model_dir: Path) -> dict[str, dict]:
    """Tensor name -> {"file", "dtype" (safetensors code), "shape"}, read from headers only."""
    files = model_tensor_files(model_dir)
    headers = {f: read_header(f) for f in set(files.values())}
    specs = {}
    for name, f in files.items():
        h = headers[f].get(name)
        if h is None:
            raise InvalidInput(
                f"{f.name} lacks tensor {name} listed in its index: the model folder is incomplete", path=str(f)
            )
        specs[name] = {"file": f, "dtype": h["dtype"], "shape": list(h["shape"])}
    return specs


def file_specs(file: Path) -> dict[str, dict]:
    return {
        k: {"file": Path(file), "dtype": v["dtype"], "shape": list(v["shape"])}
        for k, v in read_header(file).items()
        if k != "__metadata__"
    }


def load_tensor(file: Path, name: str, rows: tuple[int, int] | None = None):
    """One tensor (or rows ``[a, b)`` of it), with the file mapped only while it is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            if rows is None:
                return f.get_tensor(name)
            return f.get_slice(name)[rows[0] : rows[1]]
    except (SafetensorError, OSError) as exc:
        raise InvalidInput(
            f"cannot read tensor {name} from {file} ({exc}): the file is corrupt", path=str(file)
        ) from None


def data_ranges(file: Path) -> dict[str, tuple[int, int]]:
    """Tensor name -> (offset of its bytes in the file, their length), from the header."""
    header = read_header(file)
    with open(file, "rb") as f:
        start = 8 + struct.unpack("<Q", f.read(8))[0]
    return {
        k: (start + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
        for k, v in header.items()
        if k != "__metadata__"
    }


def read_ahead(order: list, source, submit):
    """``ahead(key)`` starts reading from disk, through ``submit`` (a background thread's), the tensor
    that follows ``key`` in ``order``, so the disk reads it while ``key`` is computed and written.
    ``source(key)`` names that tensor as (file, tensor name), or None when nothing is to be read.
    The kernel reads into its page cache (POSIX_FADV_WILLNEED): nothing more is held here."""
    following = dict(zip(order[:-1], order[1:], strict=True))
    ranges: dict[Path, dict] = {}

    def ahead(key) -> None:
        found = source(following[key]) if key in following and hasattr(os, "posix_fadvise") else None
        if found:
            file, name = found
            if file not in ranges:
                ranges[file] = data_ranges(file)
            submit(_will_need, file, *ranges[file][name])

    return ahead


def _will_need(file: Path, offset: int, length: int) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


class NonFiniteTensor(InvalidInput):
    """A tensor about to be written holds NaN or infinity (fields: ``tensor``, ``nonfinite``)."""


CHECK_ELEMENTS = 1 << 17  # checked a slice at a time, in the CPU's cache: no block-sized temporary


def nonfinite_in(data, code: str) -> int:
    """How many NaN or infinite values the raw bytes ``data`` (a uint8 numpy array) of a tensor of
    safetensors dtype ``code`` hold; 0 for types without infinity. A value is not finite when all
    its exponent bits are set: a vectorised AND and max over the bits, a cache-sized slice at a time
    (several GB/s on one core, far cheaper than torch.isfinite on CPU); counted only when one is found."""
    import numpy as np

    if code not in EXPONENT_BITS or not data.size:
        return 0
    kind, mask = getattr(np, EXPONENT_BITS[code][0]), EXPONENT_BITS[code][1]
    values = data.view(kind)
    bits = np.empty(min(values.size, CHECK_ELEMENTS), kind)
    for start in range(0, values.size, CHECK_ELEMENTS):
        part = values[start : start + CHECK_ELEMENTS]
        if int(np.bitwise_and(part, kind(mask), out=bits[: part.size]).max()) == mask:
            break
    else:
        return 0
    return int(np.count_nonzero(np.bitwise_and(values, kind(mask)) == kind(mask)))


def tensor_bytes(t):
    """A tensor's raw bytes as a flat uint8 numpy array (no copy when it is contiguous on the CPU)."""
    import torch

    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def count_nonfinite(t) -> int:
    """How many NaN or infinite values a tensor holds (0 for integer tensors)."""
    return nonfinite_in(tensor_bytes(t), DTYPES.get(str(t.dtype).removeprefix("torch."), ""))


def check_finite(file: Path, specs: dict[str, dict], what: str, todo: str) -> None:
    """Refuse ``file`` when one of its floating tensors holds NaN or infinity, naming the first one.
    Tensors are read one at a time, so memory stays at the largest tensor."""
    file = Path(file)
    for name, spec in specs.items():
        if spec["dtype"] not in EXPONENT_BITS:
            continue
        bad = count_nonfinite(load_tensor(file, name))
        if bad:
            total = nbytes(spec) // ITEMSIZE[spec["dtype"]]
            raise InvalidInput(
                f"{what} tensor {name} in {file} holds {bad} NaN/infinite value(s) of {total}: {todo}",
                tensor=name,
                nonfinite=bad,
                path=str(file),
            )


def nbytes(spec: dict) -> int:
    n = ITEMSIZE[spec["dtype"]]
    for d in spec["shape"]:
        n *= d
    return n


def plan_shards(specs: dict[str, dict], max_shard_size) -> dict[str, list[str]]:
    """File name -> tensor names, using huggingface_hub's splitting rules and names."""
    from huggingface_hub import split_state_dict_into_shards_factory

    split = split_state_dict_into_shards_factory(
        specs,
        get_storage_size=nbytes,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
        get_storage_id=lambda s: None,
    )
    return split.filename_to_tensors


def write_index(folder: Path, shards: dict[str, list[str]], specs: dict[str, dict]) -> None:
    if len(shards) < 2:
        return
    weight_map = {name: fname for fname, names in shards.items() for name in names}
    index = {
        "metadata": {"total_size": sum(nbytes(s) for s in specs.values())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (Path(folder) / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def write_stream(
    path: Path, names: list[str], specs: dict[str, dict], produce, on_bytes=None, metadata: dict | None = None
) -> str:
    """Write a safetensors file tensor by tensor. ``produce(name)`` returns the tensor, or an iterable
    of row blocks of it, in order. Checking, writing and hashing run in threads of their own
    (``block_writer``), so computing the next block overlaps with them and with the disk: a floating
    block holding NaN or infinity raises ``NonFiniteTensor`` and is not written. An OSError of the
    writing thread (a full disk) is raised here as it was, errno intact and the file named, once the
    file is closed and the threads have ended. Returns the file's sha256."""
    raw = _header_bytes(names, specs, metadata)
    try:
        with _closed_after(path) as f:
            blocks = _blocks(names, specs, produce)
            return write_blocks(f, struct.pack("<Q", len(raw)) + raw, blocks, _check_block, on_bytes)
    except OSError as exc:
        if exc.filename is None and not isinstance(exc, UploadError):
            exc.filename = str(path)  # buffered writes and close() name no file: say which one
        raise


def _header_bytes(names: list[str], specs: dict[str, dict], metadata: dict | None) -> bytes:
    """The JSON header planned from the shapes, tensors in the order given, padded to 8 bytes."""
    header, offset = {"__metadata__": metadata or {"format": "pt"}}, 0
    for name in names:
        size = nbytes(specs[name])
        header[name] = {
            "dtype": specs[name]["dtype"],
            "shape": specs[name]["shape"],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


@contextlib.contextmanager
def _closed_after(path: Path):
    """``path`` opened for writing, closed at the end; on an error the first error is the one to
    report, not close()'s echo of it."""
    f = open(path, "wb")  # noqa: SIM115 - closed below, with close()'s own error kept apart on failure
    try:
        yield f
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        raise
    f.close()


def _check_block(data, tag: tuple[str, str]) -> None:
    """Refuse a block holding NaN or infinity (run in its own thread, before the block is written)."""
    name, code = tag
    if bad := nonfinite_in(data, code):
        raise NonFiniteTensor(f"{name} would be written with {bad} NaN/infinite value(s)", tensor=name, nonfinite=bad)


def _blocks(names: list[str], specs: dict[str, dict], produce):
    """Each produced block, checked against the plan: its bytes and (tensor name, dtype code)."""
    import torch

    for name in names:
        want, done = specs[name], 0
        produced = produce(name)
        for block in [produced] if isinstance(produced, torch.Tensor) else produced:
            if (
                DTYPES.get(str(block.dtype).removeprefix("torch.")) != want["dtype"]
                or list(block.shape[1:]) != want["shape"][1:]
            ):
                raise RuntimeError(f"{name}: produced {block.dtype}{list(block.shape)}, planned {want}")
            data = block.contiguous().reshape(-1).view(torch.uint8).numpy()
            done += data.nbytes
            yield data, (name, want["dtype"])
        if done != nbytes(want):
            raise RuntimeError(f"{name}: produced {done} bytes, planned {nbytes(want)}")
