"""inspect_trainer_output: what run made the adapter (the trainer kind), from a TRL README, an arguments
file or the metrics logged in trainer_state.json, in that order."""

from __future__ import annotations

import pytest

from conftest import adapter, log_history, state, write_json
from upload_common.trainer_output import inspect_trainer_output


@pytest.mark.parametrize(
    "kind, extra, evidence",
    [
        ("kto", {"kl": 0.1, "rewards/chosen_sum": 1.0, "logps/chosen_sum": -4.0}, "rewards/* and kl"),
        (
            "dpo",
            {"rewards/chosen": 1.0, "rewards/margins": 0.5, "rewards/accuracies": 0.7, "logps/chosen": -3.0},
            "rewards/margins",
        ),
        (
            "orpo",
            {"rewards/margins": 0.5, "log_odds_ratio": -0.6, "log_odds_chosen": 0.3, "nll_loss": 1.1},
            "log_odds_ratio",
        ),
        ("cpo", {"rewards/margins": 0.5, "nll_loss": 1.1}, "nll_loss"),
        (
            "grpo",
            {
                "reward": 0.4,
                "reward_std": 0.1,
                "kl": 0.01,
                "rewards/accuracy/mean": 0.4,
                "completions/mean_length": 80.0,
            },
            "GRPO",
        ),
        ("ppo", {"objective/kl": 0.2, "policy/approxkl_avg": 0.01}, "PPO"),
        ("sft", {}, "only language-modelling loss logged"),
    ],
)
def test_kind_from_log_history(tmp_path, kind, extra, evidence):
    root = adapter(tmp_path / "run")
    state(root, log_history(extra))
    found = inspect_trainer_output(root)
    assert found["trainer"]["kind"] == kind
    assert evidence in found["trainer"]["evidence"]


def test_eval_prefixed_keys_count(tmp_path):
    root = adapter(tmp_path / "run")
    state(root, [{"step": 1, "eval_loss": 1.0, "eval_rewards/margins": 0.3}])
    assert inspect_trainer_output(root)["trainer"]["kind"] == "dpo"


@pytest.mark.parametrize("log", [[], [{"step": 1, "loss": 1.0, "custom_metric": 3}]])
def test_kind_unknown(tmp_path, log):
    root = adapter(tmp_path / "run")
    state(root, log)
    assert inspect_trainer_output(root)["trainer"]["kind"] == "unknown"


@pytest.mark.parametrize(
    "readme, kind",
    [
        (
            "---\nbase_model: x\nlibrary_name: transformers\ntags:\n- generated_from_trainer\n- trl\n- kto\n"
            "licence: license\n---\n\n# Model Card\n",
            "kto",
        ),
        ("---\ntags: [unsloth, trl, sft, dpo]\n---\nbody\n", "dpo"),
        ('---\ntags:\n  - "trl"\n  - "reward-trainer"\n---\n', "reward"),
        ("---\ntags:\n- trl\n- sft\n---\nThis model was trained with SFT.\n", "sft"),
        ("---\nlibrary_name: peft\n---\n\nThis model was trained with ORPO, a method introduced in [x](y).\n", "orpo"),
        ("# Card\n\nThis model was trained with GRPO.\n", "grpo"),
    ],
)
def test_kind_from_trl_readme(tmp_path, readme, kind):
    root = adapter(tmp_path / "run")
    (root / "README.md").write_text(readme)
    state(root, log_history({"mean_token_accuracy": 0.5}))  # the README wins over the log
    found = inspect_trainer_output(root)
    assert found["trainer"]["kind"] == kind and "README.md" in found["trainer"]["evidence"]


def test_readme_in_adapter_subfolder_and_plain_readme_ignored(tmp_path):
    root = tmp_path / "run"
    (root / "README.md").parent.mkdir()
    (root / "README.md").write_text("# My project\n\nNothing about trainers here.\n")
    adapter(root / "final")
    (root / "final" / "README.md").write_text("---\ntags:\n- cpo\n---\n")
    assert inspect_trainer_output(root)["trainer"]["kind"] == "cpo"


@pytest.mark.parametrize(
    "name, args, kind",
    [
        ("training_args.json", {"trainer": "KTOTrainer", "beta": 0.1}, "kto"),
        ("args.json", {"trainer_type": "reward_trainer"}, "reward"),
        ("trainer_config.json", {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}, "kto"),
        ("training_args.json", {"num_generations": 8, "beta": 0.04, "loss_type": "grpo"}, "grpo"),
        ("training_args.json", {"beta": 0.1, "loss_type": "sigmoid", "cpo_alpha": 1.0}, "cpo"),
        ("training_args.json", {"num_ppo_epochs": 4}, "ppo"),
        ("training_args.json", {"center_rewards_coefficient": 0.01}, "reward"),
        ("training_args.json", {"beta": 0.1, "loss_type": "sigmoid"}, "dpo"),
        ("training_args.json", {"trainer": "CustomTrainer", "packing": False}, "sft"),
    ],
)
def test_kind_from_json_args(tmp_path, name, args, kind):
    root = adapter(tmp_path / "run")
    write_json(root / name, args)
    state(root, log_history({"kl": 0.1, "rewards/chosen_sum": 1.0}))  # args win over the log
    found = inspect_trainer_output(root)
    assert found["trainer"]["kind"] == kind and name in found["trainer"]["evidence"]


def test_unhelpful_or_bad_args_files_fall_through_to_log(tmp_path):
    root = adapter(tmp_path / "run")
    (root / "training_args.json").write_text("{not json")
    write_json(root / "trainer_config.json", ["a", "list"])
    write_json(root / "args.json", {"learning_rate": 1e-4})
    state(root, log_history({"kl": 0.1, "rewards/chosen_sum": 1.0}))
    found = inspect_trainer_output(root)
    assert found["trainer"]["kind"] == "kto"
    assert any("training_args.json" in n and "not valid JSON" in n for n in found["notes"])
