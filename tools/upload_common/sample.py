"""Tiny real models for the sample job, the tests and the benchmarks: a sentencepiece tokenizer
trained on the fly, a randomly initialised model of a given family, a LoRA adapter written with
peft's tensor names, and trainer-output folders shaped like an SFT or KTO run. Nothing is
downloaded."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path

from .contract import canonical_sha256, sha256_file

# The sample's base model (the demo's and the tests'): hidden 256 / intermediate 512 so that k-quants are real,
# briefly trained so that top-1 comparisons mean something.
SAMPLE_SHAPE = {"hidden": 256, "intermediate": 512, "heads": 4, "kv_heads": 2}
SAMPLE_STEPS = 200
SUMS_FILE = "sha256sums.json"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_WORDS = (  # noqa: SIM905 - a sentence reads better than a list of words
    "the model reads a short story about a small robot who learns to paint the sea at night "
    "while the city sleeps and the lights of boats move slowly across the quiet harbour "
    "every answer is checked twice before it is written down in the old blue notebook"
).split()


def sample_text(n_sentences: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 14))]
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]))
    return out


def make_tokenizer(folder: Path, vocab_size: int = 384) -> Path:
    """Train a byte-fallback sentencepiece model and save it as a Llama tokenizer folder."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample_text()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": 512,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
    )
    tok = AutoTokenizer.from_pretrained(folder)  # writes tokenizer.json beside tokenizer.model
    tok.save_pretrained(folder)
    if not (folder / "tokenizer.model").exists():  # pragma: no cover - transformers may drop it
        (folder / "tokenizer.model").write_bytes(buf.getvalue())
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    if "chat_template" not in cfg and not (folder / "chat_template.jinja").exists():
        cfg["chat_template"] = CHAT_TEMPLATE
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def model_config(
    family: str = "llama",
    *,
    vocab: int = 384,
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    tie: bool = False,
):
    import transformers as tf

    common = dict(vocab_size=vocab, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=256, **common)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family]
    return cls(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        **common,
    )


def make_base(
    folder: Path,
    family: str = "llama",
    *,
    dtype: str = "float32",
    seed: int = 0,
    tokenizer_dir: Path | None = None,
    **config_kwargs,
) -> Path:
    """A randomly initialised causal LM saved as a Hugging Face model folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = model_config(family, **config_kwargs)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():  # wider weights than the default init: merges must matter
            p.normal_(0, 0.2)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(folder)
    if tokenizer_dir:
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, Path(folder) / f.name)
    return Path(folder)


LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_lora_adapter(
    base_dir: Path,
    folder: Path,
    *,
    r: int = 8,
    alpha: int = 16,
    targets=tuple(LLAMA_TARGETS),
    seed: int = 0,
    base_name: str | None = None,
    scale: float = 0.1,
) -> Path:
    """An adapter with peft's file layout and tensor names for every ``targets`` linear layer of
    ``base_dir``, with random non-zero A and B of std ``scale`` (a freshly initialised adapter has
    B = 0); a small scale keeps a trained base's behaviour, a large one makes merges matter."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .st_io import model_tensor_files

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, file in sorted(model_tensor_files(base_dir).items()):
        parts = name.split(".")
        if parts[-1] != "weight" or parts[-2] not in targets:
            continue
        with safe_open(file, "pt") as f:
            out_f, in_f = f.get_slice(name).get_shape()
        module = ".".join(parts[:-1])
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(r, in_f, generator=gen) * scale
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_f, r, generator=gen) * scale
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base_name or str(base_dir),
                "r": r,
                "lora_alpha": alpha,
                "target_modules": sorted(targets),
                "lora_dropout": 0.0,
                "bias": "none",
                "fan_in_fan_out": False,
                "use_rslora": False,
                "use_dora": False,
                "modules_to_save": None,
                "rank_pattern": {},
                "alpha_pattern": {},
                "inference_mode": True,
            },
            indent=2,
        )
    )
    return folder


def _log_history(kind: str, steps: list[int]) -> list[dict]:
    rows = []
    for i, step in enumerate(steps):
        loss = round(2.5 / (1 + i), 4)
        row = {
            "step": step,
            "epoch": round(step / steps[-1], 3),
            "loss": loss,
            "learning_rate": 2e-4 * (1 - i / len(steps)),
            "grad_norm": 1.0,
        }
        if kind == "kto":
            row.update(
                {"kl": 0.1, "rewards/chosen_sum": 1.0 + i, "rewards/rejected_sum": -1.0 - i, "logps/chosen_sum": -40.0}
            )
        elif kind == "sft":
            row["mean_token_accuracy"] = 0.5 + i / (2 * len(steps))
        rows.append(row)
    rows.append({"step": steps[-1], "epoch": 1.0, "train_runtime": 123.4, "train_loss": rows[-1]["loss"]})
    return rows


def make_trainer_output(
    folder: Path,
    base_dir: Path,
    *,
    kind: str = "sft",
    steps=(10, 20, 30),
    tokenizer_dir: Path | None = None,
    base_name: str | None = None,
    lora_scale: float = 0.1,
) -> Path:
    """A folder shaped like an Unsloth/TRL run: the final adapter and tokenizer at the root,
    ``checkpoint-N/`` folders, ``trainer_state.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok_src = Path(tokenizer_dir) if tokenizer_dir else None
    for i, step in enumerate(steps):
        ck = make_lora_adapter(
            base_dir, folder / f"checkpoint-{step}", seed=100 + i, base_name=base_name, scale=lora_scale
        )
        state = {
            "global_step": step,
            "max_steps": steps[-1],
            "epoch": step / steps[-1],
            "num_train_epochs": 1,
            "train_batch_size": 2,
            "best_metric": None,
            "best_model_checkpoint": None,
            "log_history": _log_history(kind, list(steps[: i + 1])),
        }
        (ck / "trainer_state.json").write_text(json.dumps(state, indent=2))
    make_lora_adapter(base_dir, folder, seed=7, base_name=base_name, scale=lora_scale)
    final_state = json.loads((folder / f"checkpoint-{steps[-1]}" / "trainer_state.json").read_text())
    final_state["log_history"] = _log_history(kind, list(steps))
    (folder / "trainer_state.json").write_text(json.dumps(final_state, indent=2))
    if tok_src:
        for f in tok_src.iterdir():
            if f.is_file() and f.name != "config.json":
                shutil.copy2(f, folder / f.name)
    return folder


def train_briefly(model_dir: Path, steps: int = 200, seed: int = 0, lr: float = 3e-3) -> Path:
    """A few hundred steps of next-token training on the sample text, saved in place: a random model
    has nearly tied logits, which makes top-1 comparisons meaningless."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():  # back to a sane init scale before training
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
            else:
                p.fill_(1.0)
    ids = torch.tensor(tok("\n".join(sample_text(2000, seed=seed + 1))).input_ids)
    seq, batch = 64, 16
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,))
        x = torch.stack([ids[s : s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(model_dir)
    return Path(model_dir)


def make_trained_base(
    folder: Path, tokenizer_dir: Path, *, steps: int = SAMPLE_STEPS, cache: Path | None = None
) -> Path:
    """The sample's base model with the tokenizer of ``tokenizer_dir``, briefly trained, at ``folder``.

    With ``cache`` (a folder) it is trained once: kept there under the hash of what makes it (this module's
    code, the tokenizer's files, the steps, the torch and transformers versions) with the sha256 of each of
    its files, and copied from there while those still match."""
    if cache is None:
        return _train_base(Path(folder), tokenizer_dir, steps)
    from filelock import FileLock

    entry = Path(cache) / _recipe_key(Path(tokenizer_dir), steps)
    with FileLock(entry.with_name(f"{entry.name}.lock")):  # processes that want it at once: one trains
        if not _intact(entry):
            shutil.rmtree(entry, ignore_errors=True)
            partial = entry.with_name(f"{entry.name}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            _train_base(partial, tokenizer_dir, steps)
            sums = {p.name: sha256_file(p) for p in sorted(partial.iterdir())}
            (partial / SUMS_FILE).write_text(json.dumps(sums, indent=2))
            partial.rename(entry)
    shutil.copytree(entry, folder, ignore=shutil.ignore_patterns(SUMS_FILE))
    return Path(folder)


def _train_base(folder: Path, tokenizer_dir: Path, steps: int) -> Path:
    make_base(folder, "llama", tokenizer_dir=tokenizer_dir, **SAMPLE_SHAPE)
    return train_briefly(folder, steps=steps)


def _recipe_key(tokenizer_dir: Path, steps: int) -> str:
    from importlib.metadata import version

    return canonical_sha256(
        {
            "code": sha256_file(Path(__file__)),
            "shape": SAMPLE_SHAPE,
            "steps": steps,
            "tokenizer": {p.name: sha256_file(p) for p in sorted(tokenizer_dir.iterdir()) if p.is_file()},
            "versions": {lib: version(lib) for lib in ("torch", "transformers")},
        }
    )


def _intact(entry: Path) -> bool:
    """The cached model's files are exactly those recorded with it, with the same sha256."""
    try:
        sums = json.loads((entry / SUMS_FILE).read_text())
        files = {p.name for p in entry.iterdir() if p.name != SUMS_FILE}
    except (OSError, ValueError):
        return False
    return files == set(sums) and all(sha256_file(entry / name) == digest for name, digest in sums.items())
