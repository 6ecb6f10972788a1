"""Which trainer made a fine-tune (SFT, KTO, DPO, ORPO, CPO, GRPO, PPO, reward), with the evidence: the
README's tags or "trained with" line, the arguments file's trainer or its options, else the metrics the
trainer logged in trainer_state.json."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

ARGS_FILES = ("training_args.json", "trainer_config.json", "args.json")
KINDS = ("sft", "kto", "dpo", "orpo", "cpo", "grpo", "ppo", "reward")
_README_TAGS = {k: k for k in KINDS if k != "reward"} | {"reward-trainer": "reward"}
_TRAINED_WITH = re.compile(r"\btrained with (SFT|KTO|DPO|ORPO|CPO|GRPO|PPO|Reward)\b", re.IGNORECASE)
_GENERIC_KEYS = {
    "step",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "total_flos",
    "train_loss",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "eval_loss",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "num_tokens",
    "num_input_tokens_seen",
}


def trainer_kind(root: Path, adapter_dir: Path, state: dict | None, read_json: Callable[[Path, str], object]) -> dict:
    """{"kind", "evidence"} of the trainer; ``read_json(path, what)`` reads an arguments file (None when
    it is unreadable, with a note)."""
    return (
        _kind_from_readme(dict.fromkeys((root, adapter_dir)))
        or _kind_from_args(root, read_json)
        or _kind_from_log(state)
        or {"kind": "unknown", "evidence": "no README tags, args file or recognisable log_history keys"}
    )


def _kind_from_readme(folders) -> dict | None:
    for folder in folders:
        readme = folder / "README.md"
        if not readme.is_file():
            continue
        text = readme.read_text(encoding="utf-8", errors="replace")
        front = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.DOTALL)
        if front:
            tags = re.search(r"^tags:[ \t]*(\[.*?\]|\n(?:[ \t]*-.*\n?)+)", front.group(1), re.MULTILINE)
            items = re.findall(r"[\w./-]+", tags.group(1)) if tags else []
            kinds = [_README_TAGS[t.lower()] for t in items if t.lower() in _README_TAGS]
            if kinds:
                pick = next((k for k in kinds if k != "sft"), kinds[0])  # sft is the common default tag
                return {"kind": pick, "evidence": f"{readme.name} in {folder.name}/ is tagged {', '.join(kinds)}"}
        m = _TRAINED_WITH.search(text)
        if m:
            return {
                "kind": m.group(1).lower(),
                "evidence": f"{readme.name} in {folder.name}/ says 'trained with {m.group(1)}'",
            }
    return None


def _kind_from_args(root: Path, read_json: Callable[[Path, str], object]) -> dict | None:
    for name in ARGS_FILES:
        if not (root / name).is_file():
            continue
        args = read_json(root / name, name)
        if not isinstance(args, dict):
            continue
        named = args.get("trainer") or args.get("trainer_type")
        if isinstance(named, str):
            key = re.sub(r"[_\s-]*trainer$", "", named.strip().lower())
            if key in KINDS:
                return {"kind": key, "evidence": f"{name} names the trainer {named!r}"}
        rules = (
            (("desirable_weight", "undesirable_weight"), "kto"),
            (("num_generations",), "grpo"),
            (("cpo_alpha", "simpo_gamma"), "cpo"),
            (("num_ppo_epochs", "cliprange"), "ppo"),
            (("center_rewards_coefficient",), "reward"),
        )
        for keys, kind in rules:
            hit = [k for k in keys if k in args]
            if hit:
                return {"kind": kind, "evidence": f"{name} has {', '.join(hit)}"}
        if "beta" in args and "loss_type" in args:
            return {"kind": "dpo", "evidence": f"{name} has beta and loss_type"}
        if "dataset_text_field" in args or "packing" in args:
            return {"kind": "sft", "evidence": f"{name} has SFT options (dataset_text_field/packing)"}
    return None


def _kind_from_log(state: dict | None) -> dict | None:
    log = (state or {}).get("log_history") or []
    raw = {k for e in log if isinstance(e, dict) for k in e}
    if not raw:
        return None
    keys = raw | {k.removeprefix("eval_") for k in raw}
    rewards = any(k.startswith("rewards/") for k in keys)
    rules = (
        (
            {"reward", "reward_std"} & keys or any(k.startswith("completions/") for k in keys),
            "grpo",
            "GRPO metrics logged (reward, completions/*)",
        ),
        (any(k.startswith(("objective/", "policy/")) for k in keys), "ppo", "PPO metrics logged (objective/*)"),
        (rewards and "kl" in keys, "kto", "rewards/* and kl logged"),
        ({"log_odds_ratio", "log_odds_chosen"} & keys, "orpo", "log_odds_ratio logged"),
        ("nll_loss" in keys, "cpo", "nll_loss without log odds logged (a DPO run with rpo_alpha logs the same)"),
        ("rewards/margins" in keys, "dpo", "rewards/margins logged"),
        ("mean_token_accuracy" in keys, "sft", "mean_token_accuracy logged"),
        ("loss" in raw and raw <= _GENERIC_KEYS, "sft", "only language-modelling loss logged"),
    )
    for hit, kind, evidence in rules:
        if hit:
            return {"kind": kind, "evidence": f"trainer_state.json: {evidence}"}
    return None
