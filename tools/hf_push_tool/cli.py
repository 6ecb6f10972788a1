"""hf-push-tool's command line: parse, call core, print. There is no token option: the token comes
from HF_TOKEN or huggingface_hub's token file."""

from __future__ import annotations

import click

from upload_common.cli import emit, fingerprint_option, json_option, log, overwrite_option, report_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--docs", required=True, type=click.Path(), help="docs-tool's output folder (upload_manifest.json, cards)."
)
@click.option(
    "--artifact",
    "artifacts",
    multiple=True,
    type=click.Path(),
    help="An artifact folder named in the upload manifest (repeatable); matched by its manifest's hash.",
)
@click.option("--out", default=None, type=click.Path(), help="Output folder for the step manifest (what went where).")
@click.option(
    "--to",
    "targets",
    multiple=True,
    default=("hf",),
    show_default=True,
    metavar="TARGET",
    help="hf | local:DIR | ollama[:NAME] (repeatable).",
)
@click.option("--set", "only", multiple=True, help="Publish only this set (repeatable; default: all).")
@click.option("--private", is_flag=True, help="Create new Hub repos as private.")
@click.option("--ollama-push", is_flag=True, help="After creating the Ollama model, push it to its registry.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent where, and send nothing.")
@click.option(
    "--retries", default=5, show_default=True, help="Attempts per request on 5xx, timeouts, dropped connections."
)
@click.option(
    "--retry-wait", default=2.0, show_default=True, help="First backoff delay in seconds (doubles each time)."
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Seconds without progress before a request fails (default: $UPLOAD_DRIVER_NET_TIMEOUT, else 60).",
)
@click.option(
    "--retry-budget",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Seconds one operation may spend on failed attempts and waits before giving up "
    "(default: $UPLOAD_DRIVER_RETRY_BUDGET, else five timeouts).",
)
@overwrite_option
@fingerprint_option
@json_option
@report_errors
def main(
    docs,
    artifacts,
    out,
    targets,
    only,
    private,
    ollama_push,
    dry_run,
    retries,
    retry_wait,
    timeout,
    retry_budget,
    overwrite,
    as_json,
):
    """Publish artifact sets to the Hugging Face Hub, an Ollama server or a local folder.

    \b
    HF_TOKEN=... hf-push-tool --docs ./artifacts/docs --artifact ./artifacts/lora --artifact ./artifacts/gguf \\
                 --out ./artifacts/push --to hf --to ollama
    """
    from .core import run

    result = run(
        docs,
        artifacts,
        out,
        targets=targets,
        only=only,
        private=private,
        ollama_push=ollama_push,
        dry_run=dry_run,
        retries=retries,
        retry_wait=retry_wait,
        timeout=timeout,
        retry_budget=retry_budget,
        overwrite=overwrite,
        log=log,
    )
    if as_json:
        emit(result, True)
    elif dry_run:
        for r in result["plan"]:
            click.echo(
                f"{r['target']:<12} {r['set']:<14} -> {r['destination']}  {r['files']} files, {r['bytes'] / 1e6:.1f} MB"
            )
            for p in r["paths"]:
                click.echo(f"{'':<16} {p}")
    else:
        for target, sets in result["published"].items():
            for s, rec in sets.items():
                if isinstance(rec, dict):
                    where = rec.get("commit_url") or rec.get("path") or rec.get("model")
                    click.echo(
                        f"{target:<12} {s:<14} {where}  ({len(rec.get('sent', []))} sent, "
                        f"{len(rec.get('unchanged', []))} unchanged)"
                    )


if __name__ == "__main__":  # pragma: no cover
    main()
