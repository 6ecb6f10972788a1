"""upload-driver's command line: run, batch, doctor, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from upload_common.cli import emit, json_option, report_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Turn a fine-tuning run's output folder into published, validated artifacts."""


@main.command()
@click.argument("trainer_output", required=False)
@click.option("--work", default=None, help="Working folder (default: <trainer output>-upload beside it).")
@click.option("--formats", default=None, help="Comma-separated: lora, merged_16bit, gguf, or a registered format.")
@click.option("--quant", "quants", multiple=True, help="GGUF type (repeatable; default Q4_K_M and Q8_0).")
@click.option("--push", multiple=True, metavar="TARGET", help="hf:ORG/NAME, ollama[:NAME] or local:DIR (repeatable).")
@click.option("--name", default=None, help="Model name (default: from hf:ORG/NAME, else the run folder's name).")
@click.option(
    "--runtime",
    type=click.Choice(["auto", "docker", "local"]),
    default=None,
    help="Containers, local processes, or Docker when its engine and images are there (default auto).",
)
@click.option("--gpus", type=click.Choice(["auto", "all", "none"]), default=None, help="GPU use (default auto).")
@click.option(
    "--base-model",
    default=None,
    metavar="ORG/NAME",
    help="Hub id of the base model, for the cards, when the adapter names a local folder.",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    default=None,
    help="Accept an adapter saved only as a pickle (adapter_model.bin), read with torch.load(weights_only=True).",
)
@click.option("--config", type=click.Path(), default=None, help="TOML file with these settings (options override it).")
@click.option("--dry-run", is_flag=True, help="Print the plan, the exact commands or containers and the disk use.")
@click.option("--force", multiple=True, metavar="STEP", help="Redo this step even when up to date (repeatable; all).")
@json_option
@report_errors
def run(
    trainer_output,
    work,
    formats,
    quants,
    push,
    name,
    runtime,
    gpus,
    base_model,
    allow_pickle,
    config,
    dry_run,
    force,
    as_json,
):
    """Plan and run every step on TRAINER_OUTPUT, in containers or as local processes.

    \b
    upload-driver run ./sft_output_rtx3090 --push hf:my-org/my-model --quant Q4_K_M
    upload-driver run --config upload.toml --dry-run
    """
    from .config import request
    from .run import execute

    req = request(
        trainer_output,
        config=config,
        work=work,
        formats=formats,
        quants=quants,
        push=push,
        name=name,
        runtime=runtime,
        gpus=gpus,
        base_model=base_model,
        allow_pickle=allow_pickle,
    )
    result = execute(req, dry_run=dry_run, force=force)
    if as_json:
        emit(result, True)
    elif dry_run:
        _print_plan(result)
    else:
        _print_summary(result)


def _print_plan(result: dict) -> None:
    for r in result["steps"]:
        size = f"~{r['expected_bytes'] / 1e9:.2f} GB" if r["expected_bytes"] else "size unknown"
        click.echo(f"{r['step']:<16} {r['status']:<11} {size:>14}  {r['output']}")
        click.echo(f"    {r['command']}")
    click.echo(
        f"expected disk use: ~{result['expected_bytes'] / 1e9:.2f} GB (free: {result['free_bytes'] / 1e9:.1f} GB)"
    )
    if result.get("memory"):
        from .memory_plan import line

        click.echo("expected memory of the quantized formats (their libraries hold the model):")
        for m in result["memory"]:
            click.echo(f"    {line(m)}")
    for p in result["problems"]:
        click.echo(f"PROBLEM: {p['problem']}")
    if result["problems"]:
        click.echo(f"the run would stop before its first step: {len(result['problems'])} problem(s) to fix")


def _print_summary(result: dict) -> None:
    """The table fits the terminal: long paths wrap (never cut, so two never look the same) and are
    shown relative to the work folder."""
    from rich.console import Console
    from rich.table import Table

    work = Path(result["work"])

    def short(path: str) -> str:
        try:
            return str(Path(path).relative_to(work))
        except ValueError:
            return path

    table = Table(title=f"upload-driver: {result['runtime']}, {result['seconds']:.1f} s, in {work}")
    for col in ("step", "output", "size", "time", "check", "published"):
        table.add_column(col, overflow="fold")
    for r in result["steps"]:
        took = "skipped" if r["skipped"] else f"{r['seconds']:.1f} s"
        table.add_row(r["step"], short(r["output"]), f"{r['bytes'] / 1e6:.1f} MB", took, r["figures"], r["published"])
    Console(file=sys.stdout, soft_wrap=False).print(table)


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--checkpoints",
    default=None,
    metavar="final|all|best|N,M",
    help="Which adapters of each run: final (what run picks; default), all checkpoint-N, best (the trainer's "
    "best_model_checkpoint, else its lowest eval loss), or steps.",
)
@click.option(
    "--publish",
    default=None,
    metavar="best|final|N",
    help="Measure each checkpoint first (merge, Q8_0 GGUF, validation; default --checkpoints all), then export "
    "and publish only this one per run in full: best = lowest perplexity on the validation text.",
)
@click.option("--config", type=click.Path(), default=None, help="A run config (TOML) under every run's settings.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where units run: this machine, or a Ray cluster (pip install 'upload-driver[ray]').",
)
@click.option("--address", default=None, metavar="HOST:PORT", help="The Ray cluster (default: RAY_ADDRESS).")
@click.option("--max-parallel", type=click.IntRange(min=1), default=None, help="Units at once (default: CPUs // 2).")
@click.option("--work", default=None, help="Working folder, WORK/<run>/<checkpoint>/ per unit (default ./batch-work).")
@json_option
@report_errors
def batch(sources, checkpoints, publish, config, engine, address, max_parallel, work, as_json):
    """Export many runs and checkpoints at once: SOURCE is a trainer output folder or a TOML batch file.

    \b
    upload-driver batch ./sweep/lr-1e-4 ./sweep/lr-3e-4 --checkpoints all
    upload-driver batch ./sft_output --publish best --config publish.toml
    upload-driver batch week.toml --max-parallel 2 --json
    upload-driver batch week.toml --engine ray --address HEAD:6379 --work /mnt/shared/exports
    """
    from .batch import print_summary, run_batch

    options = {"checkpoints": checkpoints, "publish": publish, "config": config, "max_parallel": max_parallel}
    options["work"] = work
    result = run_batch(sources, engine=engine, address=address, **options)
    if as_json:
        emit(result, True)
    else:
        print_summary(result)
    for line in result["failed"]:
        click.echo(f"error: {line}", err=True)
    if result["failed"]:
        sys.exit(1)


@main.command()
@click.option("--work", default=".", help="Where artifacts would be written (for the disk check).")
@json_option
@report_errors
def doctor(work, as_json):
    """Check Docker, the GPU runtime, the NVIDIA driver and the images' CUDA builds, the images, llama.cpp, disk
    and the token, with what to do."""
    from .doctor import checks

    found = checks(work)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        mark = {"ok": "ok  ", "warning": "warn", "problem": "FAIL"}
        for f in found:
            click.echo(f"[{mark[f['status']]}] {f['check']}: {f['detail']}")
            if f["remedy"]:
                click.echo(f"       -> {f['remedy']}")
    if any(f["status"] == "problem" for f in found):
        sys.exit(1)


@main.command()
@click.option(
    "--work",
    type=click.Path(),
    default="demo-output",
    show_default=True,
    help="Folder for the sample run and its artifacts.",
)
@click.option("--runtime", type=click.Choice(["auto", "docker", "local"]), default="auto", show_default=True)
@json_option
@report_errors
def demo(work, runtime, as_json):
    """Run the pipeline on a small sample trainer output made on the fly (no token, GPU or Docker)."""
    from .demo import next_steps, run_demo

    result = run_demo(work, runtime=runtime)
    if as_json:
        emit(result, True)
    else:
        _print_summary(result)
        for line in next_steps(result):
            click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()
