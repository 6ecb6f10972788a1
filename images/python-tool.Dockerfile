# The pure-Python steps: merge-tool, docs-tool, hf-push-tool. One Dockerfile, one final stage per tool;
# the build stage installs the project with the tool's extra into /opt/venv, nothing is compiled.
#
# Build it with images/build.sh, which maps each tool to its extras (from the registry of sets:
# `python -m upload_common.registry_cli extras TOOL`), base and stage and stages the build context in
# images/.build/<tool>/:
#
#   images/build.sh merge-tool                       # CUDA bases (a GPU step), torch from the index
#   images/build.sh --cpu merge-tool                 # CPU base, torch from the wheelhouse if it has it
#   images/build.sh docs-tool hf-push-tool           # always the plain Debian base (CPU_BASE)
#
# By hand (context staged by build.sh first): --target <tool> and that tool's extra, e.g.
#   docker build --network host -f images/python-tool.Dockerfile --target docs-tool \
#     --build-arg TOOL=docs-tool --build-arg TORCH_VERSION= \
#     --build-arg EXTRA="$(PYTHONPATH=tools python3 -m upload_common.registry_cli extras docs-tool)" \
#     -t upload-driver/docs-tool:0.1.0 images/.build/docs-tool
#
#   tool          bases (build.sh)                        torch
#   merge-tool    CUDA (--cuda, default) or CPU (--cpu)   TORCH_VERSION
#   docs-tool     CPU_BASE                                none (TORCH_VERSION=)
#   hf-push-tool  CPU_BASE                                none (TORCH_VERSION=)
#
# The ARG defaults below repeat images/versions.env (build.sh checks that they agree).
# Context layout:  pyproject.toml constraints.txt README.md tools/ driver/ build-helper.sh
#                  wheels/  optional wheelhouse (images/prefill-wheelhouse.sh), used with --find-links
#                  certs/   optional CA bundle for TLS-intercepting proxies (build time only)

ARG BUILD_BASE=debian:bookworm-slim
ARG RUNTIME_BASE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------
FROM ${BUILD_BASE} AS build
# names this project's stages, so that build.sh can remove the ones a newer build left untagged
LABEL upload-driver.stage="build"

# the console script to check (merge-tool, docs-tool or hf-push-tool) and the extra(s) it needs
ARG TOOL=
ARG EXTRA=
ARG PYTHON_VERSION=3.11
# torch, installed first (its own layer): merge-tool. Empty for the tools without torch (docs-tool,
# hf-push-tool): the build then fails if their extra pulls torch in.
ARG TORCH_VERSION=2.13.0
# cpu: torch may come from wheels/ (e.g. a +cpu wheel); cuda: a +cpu torch wheel in wheels/ is ignored,
# torch comes from the package index, whose default build is a CUDA one
ARG VARIANT=cpu
# an extra package index for torch only (e.g. PyTorch's own index of the builds for one CUDA version)
ARG TORCH_INDEX_URL=
# a CA bundle inside the build context (e.g. certs/ca.crt) for pip behind a TLS-intercepting proxy
ARG CA_BUNDLE=

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY build-helper.sh /tmp/build/build-helper.sh
COPY certs/ /tmp/build/certs/
COPY wheels/ /tmp/build/wheels/

RUN set -eu; \
    [ -n "$TOOL" ] && [ -n "$EXTRA" ] || { echo "pass --build-arg TOOL=<tool> --build-arg EXTRA=<extra> (see the table above)" >&2; exit 1; }; \
    case "$VARIANT" in \
        cpu) ;; \
        cuda) rm -fv /tmp/build/wheels/torch-*+cpu*.whl ;; \
        *) echo "VARIANT=$VARIANT: cpu or cuda" >&2; exit 1 ;; \
    esac; \
    sh /tmp/build/build-helper.sh apt-ensure ca-certificates python${PYTHON_VERSION} python${PYTHON_VERSION}-venv; \
    python${PYTHON_VERSION} -m venv /opt/venv; \
    if [ -n "$TORCH_VERSION" ]; then printf 'torch==%s\n' "$TORCH_VERSION"; fi > /tmp/build/pins.txt

ENV PATH=/opt/venv/bin:$PATH

# torch on its own: neither a dependency nor a source change downloads it again.
RUN set -eu; \
    [ -n "$TORCH_VERSION" ] || exit 0; \
    if [ -n "$TORCH_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi; \
    sh /tmp/build/build-helper.sh pip-install "torch==${TORCH_VERSION}"; \
    pip list 2>/dev/null | grep -i '^torch '

# The extra's dependencies first, from pyproject.toml and constraints.txt alone (an empty package with
# the same metadata): a change to the sources does not reinstall them (nor download torch again).
COPY pyproject.toml constraints.txt /tmp/build/deps/
RUN set -eu; \
    cd /tmp/build/deps; \
    mkdir -p tools driver; \
    touch README.md; \
    sh /tmp/build/build-helper.sh pip-install -c constraints.txt -c /tmp/build/pins.txt ".[$EXTRA]"; \
    if [ -n "$TORCH_VERSION" ] && ! sh /tmp/build/build-helper.sh extra-needs pyproject.toml "$EXTRA" torch; then \
        echo "[$EXTRA] does not need torch: build $TOOL with --build-arg TORCH_VERSION= (empty)" >&2; exit 1; \
    fi; \
    pip uninstall -y upload-driver

# The project itself, at the versions installed above.
COPY pyproject.toml constraints.txt README.md /tmp/build/src/
COPY tools/ /tmp/build/src/tools/
COPY driver/ /tmp/build/src/driver/
RUN set -eu; \
    sh /tmp/build/build-helper.sh pip-install --no-deps -c /tmp/build/src/constraints.txt "/tmp/build/src"; \
    sh /tmp/build/build-helper.sh no-deps "$EXTRA"; \
    sh /tmp/build/build-helper.sh pip-check; \
    torch=$(pip show torch 2>/dev/null | sed -n 's/^Version: //p'); \
    if [ -z "$TORCH_VERSION" ] && [ -n "$torch" ]; then \
        echo "$TOOL's image must not contain torch, but [$EXTRA] installed torch $torch" >&2; exit 1; \
    fi; \
    case "$torch" in ""|"$TORCH_VERSION"|"$TORCH_VERSION"+*) ;; *) echo "torch $torch, wanted $TORCH_VERSION" >&2; exit 1 ;; esac; \
    echo "$TOOL: [$EXTRA], torch ${torch:-not installed}"; \
    pip freeze > /opt/venv/pip-freeze.txt; \
    "$TOOL" --help > /dev/null

# ---------------------------------------------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime
# names this project's stages, so that build.sh can remove the ones a newer build left untagged
LABEL upload-driver.stage="runtime"

ARG PYTHON_VERSION=3.11

# The venv's interpreter, OpenMP (torch, bitsandbytes), tini as PID 1. Nothing else.
# (The same layer as in gguf-tool.Dockerfile: images on one base share it.)
COPY --from=build /tmp/build/build-helper.sh /tmp/build-helper.sh
RUN set -eu; \
    sh /tmp/build-helper.sh apt-ensure ca-certificates python${PYTHON_VERSION} libgomp1 tini; \
    sh /tmp/build-helper.sh add-user; \
    rm /tmp/build-helper.sh

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/work/home \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Last, so that a new revision only rebuilds the metadata layers.
ARG VARIANT=cpu
ARG EXTRA=
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=upload-driver
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      upload-driver.extra="${EXTRA}" \
      upload-driver.python.version="${PYTHON_VERSION}" \
      upload-driver.variant="${VARIANT}"

USER 1000:1000
WORKDIR /work

# ---------------------------------------------------------------------------------------------------
# One stage per tool (`--target <tool>`): title, description, entry point. Metadata only: the classic
# builder runs every stage before the target, so nothing here may depend on which tool was installed.
FROM runtime AS docs-tool
LABEL org.opencontainers.image.title="docs-tool" \
      org.opencontainers.image.description="upload-driver step: model cards, the upload manifest, a README and an Ollama Modelfile for a run's artifacts"
ENTRYPOINT ["tini", "--", "docs-tool"]
CMD ["--help"]

FROM runtime AS hf-push-tool
LABEL org.opencontainers.image.title="hf-push-tool" \
      org.opencontainers.image.description="upload-driver step: publish artifact sets to the Hugging Face Hub, an Ollama server or a local folder"
ENTRYPOINT ["tini", "--", "hf-push-tool"]
CMD ["--help"]

FROM runtime AS merge-tool
ARG TORCH_VERSION=2.13.0
LABEL org.opencontainers.image.title="merge-tool" \
      org.opencontainers.image.description="upload-driver step: export a LoRA adapter as-is or merged into its base model (16-bit safetensors, streamed)" \
      upload-driver.torch.version="${TORCH_VERSION}"
ENTRYPOINT ["tini", "--", "merge-tool"]
CMD ["--help"]
