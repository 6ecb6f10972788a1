"""merge-tool's command line: parse, call core, print."""

from __future__ import annotations

import json

import click

from upload_common.cli import emit, fingerprint_option, json_option, log, overwrite_option, report_errors
from upload_common.sets import SETS

from .formats import FORMATS


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--adapter", "adapter", type=click.Path(), help="Adapter folder or a whole trainer output folder.")
@click.option(
    "--model",
    "model",
    type=click.Path(),
    help="A merged 16-bit model folder (the merged_16bit output), for the formats made from it: "
    + ", ".join(k for k, s in SETS.items() if s.tool == "merge-tool" and s.consumes)
    + ".",
)
@click.option("--out", "out", type=click.Path(), help="Output folder (model files at its top level).")
@click.option("--base", default=None, help="Base model: local folder or Hub id (default: from adapter_config.json).")
@click.option(
    "--method",
    default="merged_16bit",
    show_default=True,
    help="Output format: " + ", ".join(f"{k} ({v['summary']})" for k, v in FORMATS.items()),
)
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True)
@click.option("--max-shard-size", default="5GB", show_default=True)
@click.option("--checkpoint", type=int, default=None, help="Use checkpoint-N instead of the default choice.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--engine",
    type=click.Choice(["streaming", "unsloth"]),
    default="streaming",
    show_default=True,
    help="unsloth: merge with Unsloth (needs a CUDA GPU and the unsloth package).",
)
@click.option(
    "--calibration",
    type=click.Path(),
    default=None,
    help="Calibration text for formats that need one (gptq, awq): a text file, a JSON Lines/JSON/Parquet/"
    "CSV file with a text or messages column, or a folder of them or a saved dataset "
    "(default: a built-in text).",
)
@click.option(
    "--eval-text",
    type=click.Path(),
    default=None,
    help="With --model: validate the quantized format on this UTF-8 text instead of the built-in one.",
)
@click.option(
    "--reference-cache",
    type=click.Path(),
    default=None,
    help="With --model: folder keeping the validation's reference log-probabilities (shared with gguf-tool).",
)
@click.option("--allow-pickle", is_flag=True, help="Convert an adapter_model.bin (torch.load weights_only=True).")
@click.option(
    "--defer-weights",
    is_flag=True,
    help="merged_16bit for gguf-tool only: write the config, tokenizer and the merge's recipe, not the weights "
    "(gguf-tool --adapter --base computes them while converting). Not a model to publish.",
)
@overwrite_option
@fingerprint_option
@json_option
@click.pass_context
@report_errors
def main(
    ctx,
    adapter,
    model,
    out,
    base,
    method,
    dtype,
    max_shard_size,
    checkpoint,
    device,
    engine,
    calibration,
    eval_text,
    reference_cache,
    allow_pickle,
    defer_weights,
    overwrite,
    as_json,
):
    """Export a LoRA adapter as-is or merged into its base model.

    \b
    merge-tool --adapter ./sft_output --out ./merged --method merged_16bit
    merge-tool --model ./merged --out ./gptq --method gptq
    merge-tool inspect ./sft_output
    merge-tool setup           # once, for gptq/awq/fp8: llm-compressor without its transformers pin
    """
    if ctx.invoked_subcommand:
        return
    if not out or bool(adapter) == bool(model):
        raise click.UsageError(
            "--out and one of --adapter (the trainer output) or --model (a merged model, for the "
            "quantized formats) are required (or use: merge-tool inspect PATH, merge-tool setup)"
        )
    if model:
        from .from_merged import run as run_from_merged

        manifest = run_from_merged(
            model,
            out,
            method=method,
            device=device,
            calibration=calibration,
            eval_text=eval_text,
            reference_cache=reference_cache,
            overwrite=overwrite,
            log=log,
        )
        emit(manifest if as_json else str(click.format_filename(out)), as_json)
        return
    from .core import run

    manifest = run(
        adapter,
        out,
        base=base,
        method=method,
        dtype=dtype,
        max_shard_size=max_shard_size,
        checkpoint=checkpoint,
        device=device,
        engine=engine,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        calibration=calibration,
        defer_weights=defer_weights,
        log=log,
    )
    emit(manifest if as_json else str(click.format_filename(out)), as_json)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--checkpoint", type=int, default=None)
@report_errors
def inspect(path, checkpoint):
    """Print what a trainer output folder holds (JSON): adapter chosen and why, tokenizer, trainer kind."""
    from upload_common.trainer_output import inspect_trainer_output

    click.echo(json.dumps(inspect_trainer_output(path, checkpoint=checkpoint), indent=2, default=str))


@main.command()
@click.option(
    "--extra",
    "extras",
    multiple=True,
    metavar="EXTRA[,EXTRA...]",
    help="Only what these extras need (default: every extra's), e.g. merge-quant.",
)
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="Print the pinned requirements, one a line, instead of installing them (for pip download, images).",
)
@report_errors
def setup(extras, print_only):
    """Install what the extras need but pip cannot resolve with the project's pins, with --no-deps.

    \b
    llm-compressor (gptq, awq, fp8) pins an older transformers than the project's; its
    quantization paths work with the project's, and what it really uses is in the merge-quant extra.
    """
    from .nodeps import entries, install

    found = entries(list(extras) or None)
    if print_only:
        for e in found:
            click.echo(e.requirement)
        return
    todo = [e for e in found if not e.installed()]
    install(todo, log)
    for e in found:
        click.echo(f"{e.requirement}: {'installed' if e in todo else 'already installed'}")


if __name__ == "__main__":  # pragma: no cover
    main()
