"""docs-tool's command line: parse, call core, print."""

from __future__ import annotations

import click

from upload_common.cli import emit, fingerprint_option, json_option, log, overwrite_option, report_errors
from upload_common.errors import UsageError


def _pairs(values, option: str) -> dict:
    """SET=VALUE options as a dict; a malformed or repeated one is a one-line usage error."""
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise UsageError(f"{option} {v!r}: use SET=VALUE, e.g. gguf=acme/my-model-GGUF")
        if key.strip() in out:
            raise UsageError(
                f"{option} {key.strip()} is given twice ({out[key.strip()]!r} and {val.strip()!r}): pass it once"
            )
        out[key.strip()] = val.strip()
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--artifact",
    "artifacts",
    multiple=True,
    type=click.Path(),
    required=True,
    help="An output folder of merge-tool or gguf-tool (repeatable): one artifact set each.",
)
@click.option("--out", required=True, type=click.Path(), help="Output folder: cards, upload_manifest.json, README.md.")
@click.option(
    "--name",
    default=None,
    help="Model name for repos and files, used as given (default: gguf-tool's, else the run's folder, "
    "made into a valid repo name).",
)
@click.option("--namespace", default=None, help="Hub user or organisation the repos go under.")
@click.option(
    "--repo",
    "repos",
    multiple=True,
    metavar="SET=REPO_ID",
    help="Repo of one set instead of <namespace>/<name><suffix> (lora: -lora, gguf: -GGUF); a valid Hub repo id.",
)
@click.option(
    "--license",
    "license_",
    default=None,
    help="Licence id (default: the base model's card, else the training run's card).",
)
@click.option("--license-link", default=None, help="With a licence that is not a Hub licence id: its URL.")
@click.option("--base-model", default=None, help="Hub id of the base model, when it was given as a local folder.")
@click.option("--dataset", "datasets", multiple=True, help="Dataset id the model was trained on (repeatable).")
@click.option("--language", "languages", multiple=True, help="Language code (repeatable).")
@click.option("--system", default=None, help="System prompt for the Ollama Modelfile.")
@click.option("--ollama-quant", default=None, help="GGUF type the Modelfile and snippets use (default Q4_K_M, ...).")
@overwrite_option
@fingerprint_option
@json_option
@report_errors
def main(
    artifacts,
    out,
    name,
    namespace,
    repos,
    license_,
    license_link,
    base_model,
    datasets,
    languages,
    system,
    ollama_quant,
    overwrite,
    as_json,
):
    """Write model cards, the upload manifest, a README and an Ollama Modelfile for a run's artifacts.

    \b
    docs-tool --artifact ./artifacts/lora --artifact ./artifacts/merged --artifact ./artifacts/gguf \\
              --out ./artifacts/docs --namespace acme --name my-model
    """
    from .core import run

    manifest = run(
        artifacts,
        out,
        name=name,
        namespace=namespace,
        repos=_pairs(repos, "--repo"),
        license=license_,
        license_link=license_link,
        base_model=base_model,
        datasets=datasets,
        languages=languages,
        system=system,
        ollama_quant=ollama_quant,
        overwrite=overwrite,
        log=log,
    )
    if as_json:
        emit(manifest, True)
    else:
        for s, st in manifest["sets"].items():
            click.echo(f"{s:<14} {st['repo_id']:<40} {out}/{s}/README.md")


if __name__ == "__main__":  # pragma: no cover
    main()
