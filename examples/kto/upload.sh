#!/usr/bin/env bash
# Publish this trainer's run with upload-driver: settings in upload.toml beside this script;
# extra arguments go to `upload-driver run` (e.g. --dry-run, --force gguf, --runtime local).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec upload-driver run --config upload.toml "$@"
