# Publish this trainer's run with upload-driver: settings in upload.toml beside this script;
# extra arguments go to `upload-driver run` (e.g. --dry-run, --force gguf, --runtime local).
# Windows: Docker Desktop (WSL2 backend) runs the tool containers; the token comes from HF_TOKEN.
$ErrorActionPreference = "Stop"
Push-Location $PSScriptRoot
try { upload-driver run --config upload.toml @args; exit $LASTEXITCODE } finally { Pop-Location }
