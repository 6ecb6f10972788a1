"""upload-driver batch with the local engine: each (run, checkpoint) gets the files `upload-driver run`
gives it, a rerun skips every step, a batch file's defaults and overrides, bad input refused in one line."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from driver_helpers import drive, one_line_error

BATCH = """
formats = ["lora", "merged_16bit"]
runtime = "local"

[merge]
dtype = "bf16"

[[run]]
trainer_output = "runs/alpha"
name = "first"
formats = ["lora"]

[[run]]
trainer_output = "runs/beta"
checkpoints = "all"
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, sft_output) -> Path:
    """Two trainer outputs (copies of the sample, checkpoints 10, 20, 30) and a batch file naming them."""
    root = tmp_path_factory.mktemp("batch")
    for name in ("alpha", "beta"):
        shutil.copytree(sft_output, root / "runs" / name)
    (root / "batch.toml").write_text(BATCH)
    return root


@pytest.fixture(scope="module")
def batched(sweep) -> dict:
    result = drive("batch", sweep / "batch.toml", "--work", sweep / "work", "--max-parallel", 2, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def files(work: Path) -> dict:
    """Every file of the work folder's artifacts by sha256, and each manifest (manifest.json,
    upload_manifest.json) as JSON without what differs between two runs of the same step: its timings, the
    disk's free space it saw, and the hashes of manifests, which hold those (a manifest_sha256, a
    fingerprint made from them)."""
    found = {}
    for p in sorted((work / "artifacts").rglob("*")):
        if p.name.endswith("manifest.json"):
            found[str(p.relative_to(work))] = _steady(json.loads(p.read_text()))
        elif p.is_file():
            found[str(p.relative_to(work))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def _steady(value):
    if isinstance(value, list):
        return [_steady(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _steady(v) for k, v in value.items() if k not in ("timings", "free_bytes")}
    if "manifest_sha256" in out:
        out["manifest_sha256"] = "(a manifest's hash)"
    if str(out.get("path", "")).endswith("manifest.json") and "sha256" in out:
        out["sha256"] = "(a manifest's hash)"
    if "fingerprint" in out and any("manifest_sha256" in i for i in (value.get("inputs") or {}).values()):
        out["fingerprint"] = "(made from manifests' hashes)"
    return out


def test_each_unit_gets_the_files_of_its_own_run(batched, sweep):
    """Each unit against `upload-driver run` of the same unit, in the same folder (the batch's moved aside)."""
    units = {(u["run"], u["checkpoint"]): u for u in batched["units"]}
    assert set(units) == {("first", "final"), *(("beta", f"checkpoint-{n}") for n in (10, 20, 30))}
    assert all(u["status"] == "done" and u["error"] is None for u in units.values()) and batched["failed"] == []
    # the run's override of the defaults: lora only; the defaults elsewhere: lora and the 16-bit merge
    assert [s["step"] for s in units["first", "final"]["steps"]] == ["lora", "docs"]
    assert [s["step"] for s in units["beta", "checkpoint-20"]["steps"]] == ["lora", "merged_16bit", "docs"]
    work, aside = sweep / "work", sweep / "work-of-the-batch"
    work.rename(aside)
    try:
        for (run, ckpt), u in units.items():
            assert Path(u["work"]) == work / run / ckpt
            config = sweep / f"{run}-{ckpt}.toml"
            step = ckpt.removeprefix("checkpoint-")
            config.write_text('[merge]\ndtype = "bf16"\n' + (f"checkpoint = {step}\n" if step.isdigit() else ""))
            formats = "lora" if run == "first" else "lora,merged_16bit"
            trainer = sweep / "runs" / ("alpha" if run == "first" else "beta")
            args = ["run", trainer, "--work", u["work"], "--formats", formats, "--name", run, "--config", config]
            result = drive(*args, "--runtime", "local", "--json")
            assert result.exit_code == 0, result.output
            assert files(aside / run / ckpt) == files(Path(u["work"])), (run, ckpt)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        aside.rename(work)
    lora = [json.loads((Path(u["work"]) / "artifacts/lora/manifest.json").read_text()) for u in units.values()]
    assert len({m["fingerprint"] for m in lora}) == 4  # each checkpoint's own adapter, not one four times


def test_a_rerun_skips_every_step(batched, sweep):
    result = drive("batch", sweep / "batch.toml", "--work", sweep / "work", "--json")
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert {s["status"] for u in again["units"] for s in u["steps"]} == {"skipped"}
    assert result.stderr.count(": skipped") == sum(len(u["steps"]) for u in again["units"]) == 2 + 3 * 3


def test_progress_lines_and_the_summary_table(batched, sweep):
    shutil.rmtree(sweep / "work" / "first" / "final" / "artifacts" / "docs")
    result = drive("batch", sweep / "batch.toml", "--work", sweep / "work")
    assert result.exit_code == 0, result.output
    assert "first/final docs: started" in result.stderr and "first/final docs: finished in " in result.stderr
    assert "beta/checkpoint-10 lora: skipped" in result.stderr
    rows = [re.split("[│┃]", line)[1:6] for line in result.stdout.splitlines() if len(re.findall("[│┃]", line)) == 6]
    rows = [[c.strip() for c in r] for r in rows]
    assert rows[0] == ["run", "checkpoint", "step", "seconds", "status"]
    assert rows[2][:3] == ["first", "final", "docs"] and rows[2][4] == "done" and float(rows[2][3]) >= 0
    assert rows[1] == ["first", "final", "lora", "", "skipped"] and len(rows) == 1 + 2 + 3 * 3
    # the sweep of the run exported at its checkpoints: the training loss each checkpoint's state logged
    assert "checkpoint sweep of beta:" in result.stdout and "checkpoint sweep of first" not in result.stdout
    sweep_rows = json.loads(drive("batch", sweep / "batch.toml", "--work", sweep / "work", "--json").stdout)["sweep"]
    assert [(r["step"], r["train_loss"], r["eval_loss"]) for r in sweep_rows["beta"]] == [
        (10, 2.5, None),
        (20, 1.25, None),
        (30, 0.8333, None),
    ]


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "does not exist"),
        ("checkpoint", "checkpoints '15'"),
        ("key", "unknown key(s) colour"),
        ("same name", "two runs are named"),
        ("twice", "two runs are named alpha"),
        ("publish", "would both publish to local:"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(sweep, tmp_path, case, needle):
    work = tmp_path / "work"
    alpha, beta = sweep / "runs" / "alpha", sweep / "runs" / "beta"
    if case == "missing":
        args = [alpha, tmp_path / "nowhere"]
    elif case == "checkpoint":
        args = [alpha, "--checkpoints", "10,15"]
    elif case == "key":
        bad = tmp_path / "bad.toml"
        bad.write_text(f'[[run]]\ntrainer_output = "{alpha}"\ncolour = "red"\n')
        args = [bad]
    elif case == "twice":
        args = [alpha, "--checkpoints", "10", alpha]
    elif case == "publish":  # every checkpoint of one run into the same repo
        args = [beta, "--checkpoints", "all", "--config", _config(tmp_path, f'push = ["local:{tmp_path / "site"}"]')]
    else:
        args = [alpha, beta, "--config", _config(tmp_path, 'name = "same"')]
    line = one_line_error(drive("batch", *args, "--work", work), 2)
    assert needle in line, line
    assert not work.exists()


def _config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "run.toml"
    config.write_text(text + "\n")
    return config


def test_a_failed_unit_is_one_line_and_the_others_finish(sft_output, tmp_path):
    """A unit whose step fails after the checks (merge-tool refuses the dtype) ends alone, in one line."""
    batch = tmp_path / "batch.toml"
    runs = "".join(
        f'[[run]]\ntrainer_output = "{sft_output}"\nname = "{name}"\n[run.merge]\ndtype = "{dtype}"\n'
        for name, dtype in (("good", "bf16"), ("bad", "fp12"))
    )
    batch.write_text(f'formats = ["lora"]\nruntime = "local"\ncheckpoints = "10"\n{runs}')
    result = drive("batch", batch, "--work", tmp_path / "work", "--json")
    assert result.exit_code == 1, (result.output, result.stderr)
    units = {u["run"]: u for u in json.loads(result.stdout)["units"]}
    assert units["good"]["status"] == "done" and units["bad"]["status"] == "failed"
    assert [s["status"] for s in units["bad"]["steps"]] == ["failed", "not run"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {units['bad']['error']}"] and "bad/checkpoint-10 lora: step lora" in errors[0]
    assert "bad/checkpoint-10 lora: failed: " in result.stderr and "Traceback" not in result.stderr
    # the units' tools write into a file per step, not onto the batch's stderr, where they would mix; the
    # failure quotes the tool's last line and names the file
    log = Path(units["bad"]["logs"]) / "lora.log"
    said = "Error: Invalid value for '--dtype': 'fp12' is not one of"
    assert said in log.read_text() and said in errors[0] and f"its output: {log}" in errors[0]
    assert not any(line.startswith(("Usage:", "Error:")) for line in result.stderr.splitlines())  # not raw
    assert (Path(units["good"]["logs"]) / "lora.log").is_file()


def test_the_sweep_reports_each_checkpoints_gguf_figures(sft_output, tmp_path):
    """One GGUF unit: the sweep row carries the 16-bit GGUF's perplexity and Q8_0's mean KL from its manifest."""
    batch = tmp_path / "gguf.toml"
    batch.write_text(
        f'formats = ["gguf"]\nquants = ["Q8_0"]\nruntime = "local"\n'
        "[gguf.min_top1]\nQ8_0 = 0.5\n"  # the sample's base is untrained: its next tokens are near ties
        f'[[run]]\ntrainer_output = "{sft_output}"\nname = "gg"\ncheckpoints = [30]\n'
    )
    result = drive("batch", batch, "--work", tmp_path / "work", "--json")
    assert result.exit_code == 0, (result.output, result.stderr)
    (row,) = json.loads(result.stdout)["sweep"]["gg"]
    m = json.loads((tmp_path / "work/gg/checkpoint-30/artifacts/gguf/manifest.json").read_text())
    sixteen = m["decisions"]["reference"]["intermediate"]["validation"]
    assert row["perplexity_16bit"] == sixteen["perplexity"] > 1
    assert row["mean_kl"] == {"Q8_0": m["files"]["Q8_0"]["validation"]["mean_kl"]}
    assert (row["step"], row["train_loss"]) == (30, 0.8333)


def _state(folder: Path, **changes) -> None:
    """The run's trainer_state.json with ``changes``: a best checkpoint, or eval losses at steps."""
    path = folder / "trainer_state.json"
    state = json.loads(path.read_text())
    for step, loss in changes.pop("eval_loss", {}).items():
        state["log_history"].append({"step": step, "eval_loss": loss})
    state.update(changes)
    path.write_text(json.dumps(state))


def test_checkpoints_best_is_the_trainers_choice_or_its_lowest_eval_loss(sft_output, tmp_path):
    from upload_driver.batch import units

    run = Path(shutil.copytree(sft_output, tmp_path / "run"))
    _state(run, eval_loss={10: 1.9, 20: 1.2, 30: 1.5})  # logged at each save, as with eval_strategy = save
    lines = []
    (u,) = units([run], checkpoints="best", config=None, work=tmp_path / "w", log=lines.append)
    assert (u.checkpoint, lines) == (
        "checkpoint-20",
        ["run: checkpoint-20 is the best: the lowest eval loss the trainer logged at a checkpoint (1.2000)"],
    )
    _state(run, best_model_checkpoint="outputs\\checkpoint-30")  # metric_for_best_model's choice wins
    (u,) = units([run], checkpoints="best", config=None, work=tmp_path / "w")
    assert u.checkpoint == "checkpoint-30" and str(u.req.work).endswith("run/checkpoint-30")
    clean = Path(shutil.copytree(sft_output, tmp_path / "clean"))
    line = one_line_error(drive("batch", clean, "--checkpoints", "best", "--work", tmp_path / "w2"), 2)
    assert "names no best checkpoint and logs no eval loss" in line and "--publish best" in line
    assert not (tmp_path / "w2").exists()


PUBLISHED = """
formats = ["lora", "gguf"]
quants = ["Q4_K_M"]
runtime = "local"
[gguf.min_top1]
BF16 = 0.9
Q4_K_M = 0.3
Q8_0 = 0.5
"""  # the sample's base is untrained: its next tokens are near ties


@pytest.fixture(scope="module")
def published(sft_output, tmp_path_factory) -> dict:
    """--publish best on the sample's three checkpoints: the sweep, then the chosen one in full, published
    to a local site; then the same batch again."""
    tmp = tmp_path_factory.mktemp("publish")
    config = tmp / "run.toml"
    config.write_text(f'push = ["local:{tmp / "site"}"]\n{PUBLISHED}')
    args = ("batch", sft_output, "--publish", "best", "--config", config, "--work", tmp / "work", "--json")
    first = drive(*args)
    assert first.exit_code == 0, (first.output, first.stderr)
    again = drive(*args)
    return {"tmp": tmp, "first": first, "result": json.loads(first.stdout), "again": again}


def test_publish_best_measures_every_checkpoint_and_exports_only_the_best(published):
    result, tmp = published["result"], published["tmp"]
    sweep = {u["checkpoint"]: u for u in result["units"] if u["stage"] == "sweep"}
    assert sorted(sweep) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    for u in sweep.values():  # the quick export: the GGUF step alone (its merge deferred), nothing published
        assert [s["step"] for s in u["steps"]] == ["merged_16bit", "gguf", "docs"] and u["status"] == "done"
        assert sorted(p.name for p in (Path(u["work"]) / "artifacts" / "gguf").glob("*.gguf"))[-1].endswith("Q8_0.gguf")
    (run,) = result["chosen"]
    rows = result["sweep"][run]
    best = min(rows, key=lambda r: r["perplexity_16bit"])
    chosen = result["chosen"][run]
    assert chosen["checkpoint"] == f"checkpoint-{best['step']}" and "lowest 16-bit perplexity" in chosen["why"]
    assert f"{best['perplexity_16bit']:.3f}" in chosen["why"]
    (full,) = [u for u in result["units"] if u["stage"] == "export"]
    assert full["checkpoint"] == chosen["checkpoint"] and full["status"] == "done"
    assert [s["step"] for s in full["steps"]] == ["lora", "merged_16bit", "gguf", "docs", "publish-local"]
    assert Path(full["work"]) == tmp / "work" / run / chosen["checkpoint"]
    site = [p.name for p in (tmp / "site").rglob("*.gguf")]  # the chosen one's full set, and only it
    assert len(site) == 1 and site[0].endswith("Q4_K_M.gguf")
    assert f"{run}: {chosen['checkpoint']} chosen for the full export" in published["first"].stderr


def test_publish_rerun_skips_both_phases(published):
    again = published["again"]
    assert again.exit_code == 0, (again.output, again.stderr)
    result = json.loads(again.stdout)
    assert result["chosen"] == published["result"]["chosen"]
    assert {s["status"] for u in result["units"] for s in u["steps"]} == {"skipped"}


@pytest.mark.parametrize(
    ("choice", "needle"), [("15", "exports no checkpoint-15 (checkpoint-10, checkpoint-20"), ("soon", "choose best")]
)
def test_publish_of_a_checkpoint_not_exported_is_one_line(sft_output, tmp_path, choice, needle):
    line = one_line_error(drive("batch", sft_output, "--publish", choice, "--work", tmp_path / "w"), 2)
    assert needle in line, line
    assert not (tmp_path / "w").exists()


def test_a_failed_steps_message_quotes_its_last_line_printable_and_short(tmp_path):
    from upload_driver.local import failure, last_line
    from upload_driver.plan import PlannedStep

    log = tmp_path / "gguf.log"
    log.write_bytes(b"progress 10%\rprogress 100%\n" + b"x" * 20000 + b"\nerror: bad \x1b[31mred\x1b[0m input\n\n")
    assert last_line(log) == "error: bad [31mred[0m input"
    log.write_bytes(b"error: " + b"y" * 1000 + b"\n")
    assert len(last_line(log)) == 300 and last_line(log).endswith("…")
    step = PlannedStep("gguf", "gguf-tool", "gguf_tool.cli", tmp_path / "out")
    message = failure(step, None, 1, output=log)
    assert message.startswith("step gguf (gguf-tool) failed (exit code 1): error: yyy") and "\n" not in message
    assert f"its output: {log}" in message
    assert last_line(tmp_path / "missing.log") == ""


def test_a_hostile_trainer_state_is_read_as_none(sft_output, tmp_path):
    """A checkpoint's trainer_state.json that is a link to an endless device, a pipe, or not JSON: `best`
    reads nothing from it (and does not hang), the others still count."""
    import os

    from upload_driver.batch import units

    run = Path(shutil.copytree(sft_output, tmp_path / "run"))
    _state(run, eval_loss={10: 1.9, 20: 1.2, 30: 1.5})
    (run / "checkpoint-10" / "trainer_state.json").unlink()
    os.symlink("/dev/zero", run / "checkpoint-10" / "trainer_state.json")
    (run / "checkpoint-20" / "trainer_state.json").unlink()
    os.mkfifo(run / "checkpoint-20" / "trainer_state.json")
    (run / "checkpoint-30" / "trainer_state.json").write_text("[1, 2")
    (u,) = units([run], checkpoints="best", config=None, work=tmp_path / "w")
    assert u.checkpoint == "checkpoint-20"  # from the run's own file, the only one read
