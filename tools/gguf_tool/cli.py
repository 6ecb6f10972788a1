"""gguf-tool's command line: parse, call core, print."""

from __future__ import annotations

import click

from upload_common.cli import emit, fingerprint_option, json_option, log, overwrite_option, report_errors

from .job import DEFAULT_TOKENS
from .quants import QUANTS


def _thresholds(values) -> dict:
    out = {}
    for v in values:
        q, sep, x = v.partition("=")
        if not sep:
            raise click.BadParameter(f"{v!r}: use QUANT=VALUE, e.g. Q4_K_M=0.9", param_hint="--min-top1")
        out[q.strip().upper()] = float(x)
    return out


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", type=click.Path(), help="Hugging Face model folder (e.g. merge-tool's output).")
@click.option("--out", "out", type=click.Path(), help="Output folder for the GGUF files and manifest.json.")
@click.option(
    "--quant",
    "quants",
    multiple=True,
    metavar="TYPE",
    help=f"Quantization, repeatable ({', '.join(QUANTS)}); case-insensitive.",
)
@click.option(
    "--outtype",
    type=click.Choice(["auto", "f16", "bf16", "f32"]),
    default="auto",
    show_default=True,
    help="Type of the intermediate conversion when no float type is asked for.",
)
@click.option("--imatrix", type=click.Path(), default=None, help="Importance matrix file (needed by IQ1/IQ2 types).")
@click.option("--calibration", type=click.Path(), default=None, help="Text file to compute an importance matrix from.")
@click.option("--split-max-size", default=None, help="Split files above this size, e.g. 48G.")
@click.option("--lora", type=click.Path(), default=None, help="Also make a LoRA adapter GGUF from this adapter folder.")
@click.option(
    "--base",
    type=click.Path(),
    default=None,
    help="With --lora, or --model holding a deferred merge: the base model folder of the adapter.",
)
@click.option(
    "--adapter",
    type=click.Path(),
    default=None,
    help="With --model holding a deferred merge (merge-tool --defer-weights): the trainer output or adapter "
    "folder it merges; the merged weights are computed while converting, never written.",
)
@click.option(
    "--validate-tokens", type=int, default=DEFAULT_TOKENS, show_default=True, help="Token budget of the validation."
)
@click.option(
    "--eval-text",
    type=click.Path(),
    default=None,
    help="Validate on this UTF-8 text file instead of the built-in text (prose, code, numbers, chat turns).",
)
@click.option(
    "--reference-cache",
    type=click.Path(),
    default=None,
    help="Folder keeping the validation's reference log-probabilities for later runs (content-addressed).",
)
@click.option("--no-validate", is_flag=True, help="Skip the comparison with the Hugging Face model.")
@click.option(
    "--min-top1",
    multiple=True,
    metavar="QUANT=VALUE",
    help="Top-1 agreement a file needs to pass (defaults: F16/BF16 0.99, Q8_0 0.97).",
)
@click.option("--name", default=None, help="Model name for file names and metadata (default: the folder's name).")
@overwrite_option
@fingerprint_option
@json_option
@click.pass_context
@report_errors
def main(
    ctx,
    model,
    out,
    quants,
    outtype,
    imatrix,
    calibration,
    split_max_size,
    lora,
    base,
    adapter,
    validate_tokens,
    eval_text,
    reference_cache,
    no_validate,
    min_top1,
    name,
    overwrite,
    as_json,
):
    """Convert a model to GGUF with llama.cpp, quantize it, and validate every file.

    \b
    gguf-tool --model ./merged --out ./gguf --quant Q4_K_M --quant Q8_0
    gguf-tool setup            # once: llama.cpp's converter from the pinned sdist
    gguf-tool setup --with-tools   # and llama-quantize, llama-imatrix now (else on first need)
    """
    if ctx.invoked_subcommand:
        return
    if not model or not out:
        raise click.UsageError("--model and --out are required (or: gguf-tool setup)")
    from .core import run

    manifest = run(
        model,
        out,
        quants=quants or ("Q8_0", "Q4_K_M"),
        outtype=outtype,
        imatrix=imatrix,
        calibration=calibration,
        split_max_size=split_max_size,
        lora=lora,
        base=base,
        adapter=adapter,
        validate_tokens=validate_tokens,
        eval_text=eval_text,
        reference_cache=reference_cache,
        validate=not no_validate,
        name=name,
        min_top1=_thresholds(min_top1),
        overwrite=overwrite,
        log=log,
    )
    if as_json:
        emit(manifest, True)
    else:
        for info in manifest["files"].values():
            v = info.get("validation") or {}
            figures = f"  top-1 {v['top1_agreement']:.3f}  KL {v['mean_kl']:.5f}" if v else ""
            for f in info["files"]:
                click.echo(f"{out}/{f}{figures}")


@main.command()
@report_errors
def status():
    """Where llama.cpp's converter is, and whether llama-quantize/llama-imatrix are built (one line;
    exit 1 when the converter is not set up)."""
    from .llama_tree import converter, tool

    folder = converter()
    tools = (
        "with llama-quantize/llama-imatrix"
        if tool("llama-quantize")
        else "llama-quantize/llama-imatrix: built when a step first needs an importance matrix"
    )
    click.echo(f"converter in {folder} ({tools})")


@main.command()
@click.option(
    "--sdist",
    type=click.Path(exists=True),
    default=None,
    help="A llama-cpp-python sdist of the installed version (default: pip downloads it).",
)
@click.option(
    "--with-tools",
    is_flag=True,
    help="Also build llama-quantize and llama-imatrix now (for --imatrix, "
    "--calibration; needs cmake and a C++ compiler). Without it they are built the first time a step needs "
    "them.",
)
@report_errors
def setup(sdist, with_tools):
    """Extract llama.cpp's converter from the sdist of the installed llama-cpp-python, and keep the
    sdist to build llama-quantize and llama-imatrix from when first needed (or now: --with-tools)."""
    from .llama_tree import setup as do_setup

    click.echo(str(do_setup(sdist, with_tools=with_tools, log=log)))


if __name__ == "__main__":  # pragma: no cover
    main()
