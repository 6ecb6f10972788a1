"""The memory a quantized format's step will take, said before the run starts: the formats whose libraries
hold the whole model (bitsandbytes, llm-compressor) cannot stream it the way merged_16bit and gguf-tool do,
so the dry run says what they will need, in RAM and in GPU memory, from the base's tensor shapes (the
specs the disk plan reads: a local folder's safetensors headers, or the Hub's metadata).

One record per format. On the CPU, its peak RSS is the process plus a multiple of the 16-bit merge's
size, fitted to what bench/formats.py measured (FITTED): the library's copies of the model, the merge's
file mapped while it loads, the quantized model loaded back to be validated. On the GPU (no measurement
yet: from what the code holds) merge-tool loads the merge onto the GPU (``device_map``), so the peak is
the larger of two phases: quantizing (bitsandbytes: the quantized model, one 16-bit tensor in flight;
llm-compressor: the whole 16-bit merge and one layer's work) and validating (what the library still
holds, and the quantized model; the reference streams the 16-bit merge on the CPU), and RAM holds the process, the
merge's mapped file and llm-compressor's calibration activations (kept on the CPU between layers)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .disk_plan import arg
from .plan import PlannedStep

GB = 10**9
CUDA_CONTEXT = 500 << 20  # torch's CUDA context and kernels on the GPU (a usual figure, not measured here)
CAL_TOKENS = 128 * 512  # merge-tool's calibration: SAMPLES sequences of SEQ_LEN tokens at most (a test checks)
PROCESS = 600 << 20  # Python with torch, transformers and the library imported (the fits' intercept)
_LAYER = re.compile(r"\.layers\.(\d+)\.")

# Peak RSS in MiB that bench/formats.py --device cpu measured for Llama-shaped bf16 merges of FITTED_BYTES
# (--hidden 1024 --layers 8, and --hidden 2048 --layers 8). A format's slope (MemoryModel.cpu) comes from its
# two figures; gptq and awq, measured at the smaller size only, take the mean of fp8's and w8a16's.
FITTED_BYTES = (152_602_624, 607_195_136)
FITTED = {
    "merged_4bit": (808, 1483),
    "merged_8bit": (764, 1522),
    "gptq": (1067, None),
    "awq": (1091, None),
    "fp8": (1021, 2630),
    "w8a16": (1140, 2401),
}


@dataclass(frozen=True)
class Shape:
    """What the memory of a quantizer depends on, from the base's tensor shapes."""

    params: int  # every parameter
    linear: int  # parameters of the decoder layers' 2-D weights (what the quantizers convert)
    layer: int  # parameters of the largest decoder layer
    hessians: int  # GPTQ's Hessians of the largest layer: the sum of in_features² of its 2-D weights
    outside: int  # the largest tensor outside the decoder layers (embeddings, output layer)
    hidden: int  # the width of the hidden states passed from layer to layer
    width: int = 2  # bytes per weight of the 16-bit merge (4 when merged in fp32)

    @classmethod
    def of(cls, specs: dict, width: int = 2) -> Shape:
        layers: dict[str, int] = {}
        hess: dict[str, int] = {}
        linear = outside = hidden = 0
        for name, s in specs.items():
            n, m = math.prod(s["shape"]), _LAYER.search(name)
            if not m:
                outside, hidden = max(outside, n), max(hidden, s["shape"][-1])
                continue
            layers[m.group(1)] = layers.get(m.group(1), 0) + n
            if len(s["shape"]) == 2:
                linear += n
                hess[m.group(1)] = hess.get(m.group(1), 0) + s["shape"][1] ** 2
        total = sum(math.prod(s["shape"]) for s in specs.values())
        most = max(layers.values(), default=0)
        return cls(total, linear, most, max(hess.values(), default=0), outside, hidden, width)

    @property
    def merged(self) -> int:
        return self.params * self.width

    def quantized(self, bits: float) -> int:
        """The quantized model: the layers' weights at ``bits``, everything else kept at 16 bit."""
        return int(self.linear * bits / 8) + (self.params - self.linear) * self.width


def _nothing(s: Shape) -> int:
    return 0


@dataclass(frozen=True)
class Peak:
    ram: int
    vram: int


@dataclass(frozen=True)
class MemoryModel:
    """A format's memory: its output's bits per quantized weight; on the CPU, its peak RSS per byte of the
    16-bit merge (fitted); on the GPU, what quantizing holds there, what the library still holds while the
    result is validated, and what stays in RAM; why, in one line."""

    fmt: str
    bits: float
    cpu: float  # peak RSS on the CPU beyond the process, per byte of the 16-bit merge (FITTED)
    gpu: Callable[[Shape, float], int]  # (shape, bits) -> bytes on the GPU while quantizing
    kept: Callable[[Shape], int]  # bytes the library still holds on the GPU while the result is validated
    why: str
    ram: Callable[[Shape], int] = _nothing  # bytes in RAM whatever the device (calibration activations)

    def phases(self, s: Shape, gpu: bool) -> tuple[Peak, Peak]:
        """(quantizing, validating); on the CPU one fitted figure for both."""
        if not gpu:
            fitted = Peak(PROCESS + int(self.cpu * s.merged) + self.ram(s), 0)
            return fitted, fitted
        ram = PROCESS + s.merged + self.ram(s)  # the merge's file is mapped while transformers loads it
        quantizing = CUDA_CONTEXT + self.gpu(s, self.bits)
        validating = CUDA_CONTEXT + self.kept(s) + s.quantized(self.bits)
        # the reference streams the merge on the CPU: one part at a time in fp32
        return Peak(ram, quantizing), Peak(PROCESS + max(s.layer, s.outside) * 4, validating)

    def size(self, s: Shape) -> int:
        return s.quantized(self.bits)

    def peak(self, s: Shape, gpu: bool) -> Peak:
        q, v = self.phases(s, gpu)
        return Peak(max(q.ram, v.ram), max(q.vram, v.vram))


def _bnb(s: Shape, bits: float) -> int:
    """bitsandbytes: the quantized model and one 16-bit tensor in flight (transformers quantizes each
    weight as it lands)."""
    return s.quantized(bits) + max(s.outside, s.layer) * s.width


def _merge(s: Shape) -> int:
    """llm-compressor holds the 16-bit merge where it was loaded, and its session keeps it after oneshot
    (the session is reset only when the next oneshot starts)."""
    return s.merged


def _preset(s: Shape, bits: float) -> int:
    """llm-compressor without data: the merge, and one layer's weights quantized at a time."""
    return s.merged + s.layer * s.width


def _cache(s: Shape) -> int:
    """The calibration activations passed from layer to layer, kept on the CPU."""
    return CAL_TOKENS * s.hidden * s.width


_BNB = "bitsandbytes quantizes each weight as transformers loads it, the {}-bit model stays"
_LLMC = "llm-compressor holds the whole 16-bit merge where merge-tool loads it, {}"
_SLOPE = {f: (b - a) * 2**20 / (FITTED_BYTES[1] - FITTED_BYTES[0]) for f, (a, b) in FITTED.items() if b}
_SLOPE["gptq"] = _SLOPE["awq"] = (_SLOPE["fp8"] + _SLOPE["w8a16"]) / 2

MODELS = {
    m.fmt: m
    for m in (
        MemoryModel("merged_4bit", 4.127, _SLOPE["merged_4bit"], _bnb, _nothing, _BNB.format(4)),  # NF4 + absmax
        MemoryModel("merged_8bit", 8.0, _SLOPE["merged_8bit"], _bnb, _nothing, _BNB.format(8)),
        MemoryModel(
            "gptq",
            4.125,  # int4 and a 16-bit scale per group of 128
            _SLOPE["gptq"],
            lambda s, bits: s.merged + s.hessians * 4 + s.layer * s.width,  # fp32 Hessians of one layer, its copy
            _merge,
            _LLMC.format("one layer's Hessians on it"),
            _cache,
        ),
        MemoryModel(
            "awq",
            4.125,
            _SLOPE["awq"],
            lambda s, bits: s.merged + _cache(s) + s.layer * s.width,  # one layer's calibration inputs, its copy
            _merge,
            _LLMC.format("one layer's calibration activations on it"),
            _cache,
        ),
        MemoryModel("fp8", 8.0, _SLOPE["fp8"], _preset, _merge, _LLMC.format("no calibration data")),
        MemoryModel("w8a16", 8.0, _SLOPE["w8a16"], _preset, _merge, _LLMC.format("no calibration data")),
    )
}
VALIDATION_WHY = "the peak is the validation: the quantized model loaded on the GPU beside what the library keeps"
CPU_WHY = "on the CPU: the process and {:.1f}x the 16-bit merge, {}"


def quantized_bytes(fmt: str, specs: dict | None, width: int = 2) -> int | None:
    """The weights a quantized format writes (None for another format, or unknown shapes)."""
    return MODELS[fmt].size(Shape.of(specs, width)) if fmt in MODELS and specs else None


def plan(steps: Sequence[PlannedStep], specs: dict | None, gpu: bool) -> list[dict]:
    """One row per step of a format in MODELS: its expected peak RAM and GPU memory (``gpu``: the steps
    that can use one get it) and why, naming the phase that makes the peak; bytes None when the base's
    shapes are unknown."""
    merge = next((s for s in steps if s.name == "merged_16bit"), None)
    shape = Shape.of(specs, 4 if merge and arg(merge, "--dtype") == "fp32" else 2) if specs else None
    rows = []
    for step in steps:
        model = MODELS.get(step.name) if step.tool == "merge-tool" else None
        if model is None:
            continue
        row = {"step": step.name, "ram_bytes": None, "vram_bytes": None, "why": model.why}
        if shape:
            on = gpu and step.gpu
            q, v = model.phases(shape, on)
            row.update(ram_bytes=max(q.ram, v.ram), vram_bytes=max(q.vram, v.vram))
            if not on:
                how = "as measured" if FITTED[step.name][1] else "assumed as for fp8 and w8a16"
                row["why"] = f"{model.why}; {CPU_WHY.format(model.cpu, how)}"
            elif v.vram > q.vram:
                row["why"] = f"{model.why}; {VALIDATION_WHY}"
        rows.append(row)
    return rows


def line(row: dict) -> str:
    """The dry run's line: ``gptq: ~17.1 GB RAM, ~1.2 GB VRAM (why)``."""
    if row["ram_bytes"] is None:
        return f"{row['step']}: memory unknown (the base's shapes could not be read) ({row['why']})"
    vram = f"~{row['vram_bytes'] / GB:.1f} GB VRAM" if row["vram_bytes"] else "no GPU"
    return f"{row['step']}: ~{row['ram_bytes'] / GB:.1f} GB RAM, {vram} ({row['why']})"
