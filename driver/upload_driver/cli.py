"""upload-driver's command line."""

from __future__ import annotations

import click

from upload_common.cli import emit, json_option, report_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Turn a fine-tuning run's output folder into published, validated artifacts."""


@main.command()
@click.option("--work", type=click.Path(), default="demo-output", show_default=True,
              help="Folder for the sample run and its artifacts.")
@json_option
@report_errors
def demo(work, as_json):
    """Run the pipeline on a small sample trainer output made on the fly (no token, GPU or Docker)."""
    from .demo import run_demo

    rows = run_demo(work)
    if as_json:
        emit(rows, True)
        return
    for r in rows:
        click.echo(f"{r['step']:<14} {r['bytes'] / 1e6:8.2f} MB  {r['files']:>2} files  {r['seconds']:5.1f} s  {r['path']}")


if __name__ == "__main__":  # pragma: no cover
    main()
