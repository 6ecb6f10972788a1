# gguf-tool: Hugging Face folder -> GGUF files (llama.cpp converter + quantizer), validated.
#
# Build it with images/build.sh, which stages the build context (project sources, optional wheels/ and
# certs/) in images/.build/gguf-tool/ and passes the pinned versions of images/versions.env:
#
#   images/build.sh gguf-tool                                            # CUDA (default)
#   images/build.sh --cpu --base-image debian:bookworm-slim gguf-tool    # CPU / CI
#
# The ARG defaults below repeat images/versions.env (build.sh checks that they agree).
# Context layout:  pyproject.toml constraints.txt README.md tools/ driver/ build-helper.sh
#                  wheels/  optional wheelhouse (images/prefill-wheelhouse.sh): the dependencies' wheels,
#                           torch-<TORCH_VERSION>*.whl, llama_cpp_python-* wheel/sdist,
#                           llama.cpp-tree-<LLAMA_CPP_PYTHON_VERSION>.tar.gz (CPU builds: no compile)
#                  certs/   optional CA bundle for TLS-intercepting proxies (build time only)

ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04
ARG BUILD_BASE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION}
ARG RUNTIME_BASE=nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}

# ---------------------------------------------------------------------------------------------------
FROM ${BUILD_BASE} AS build
# names this project's stages, so that build.sh can remove the ones a newer build left untagged
LABEL upload-driver.stage="build"

ARG PYTHON_VERSION=3.11
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ARG TORCH_VERSION=2.13.0
# on: build llama.cpp with CUDA (needs a CUDA devel base); off: CPU build (or a CPU wheel from wheels/)
ARG GGML_CUDA=on
# the GPUs llama.cpp's CUDA kernels are built for (images/versions.env says why these); empty: llama.cpp's list
ARG CUDA_ARCHITECTURES=80;86;89;90
# a CA bundle inside the build context (e.g. certs/ca.crt) for pip behind a TLS-intercepting proxy
ARG CA_BUNDLE=

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY build-helper.sh /tmp/build/build-helper.sh
COPY certs/ /tmp/build/certs/
COPY wheels/ /tmp/build/wheels/

# Python, and the compilers only for what is compiled here: llama-cpp-python (CUDA, or no CPU wheel in
# wheels/) and llama-quantize / llama-imatrix (CUDA, or no llama.cpp-tree tarball in wheels/).
# /tmp/build/plan records the choice for the steps below.
RUN set -eu; \
    wheel=$(ls /tmp/build/wheels/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}-*.whl 2>/dev/null | head -n1 || true); \
    tree=/tmp/build/wheels/llama.cpp-tree-${LLAMA_CPP_PYTHON_VERSION}.tar.gz; \
    [ "$GGML_CUDA" = off ] && [ -n "$wheel" ] || wheel=""; \
    [ "$GGML_CUDA" = off ] && [ -f "$tree" ] || tree=""; \
    printf 'wheel=%s\ntree=%s\n' "$wheel" "$tree" > /tmp/build/plan; \
    # libgomp1: llama.cpp's programs link OpenMP (build-essential brings it when compiling)
    pkgs="ca-certificates python${PYTHON_VERSION} python${PYTHON_VERSION}-venv libgomp1"; \
    if [ -z "$wheel" ] || [ -z "$tree" ]; then pkgs="$pkgs build-essential cmake"; fi; \
    if [ -z "$wheel" ]; then pkgs="$pkgs python${PYTHON_VERSION}-dev git"; fi; \
    sh /tmp/build/build-helper.sh apt-ensure $pkgs; \
    python${PYTHON_VERSION} -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH

# The llama-cpp-python sdist: both the library and the converter come from it (one llama.cpp commit).
# Not needed when both the library (wheel) and the llama.cpp tree come prebuilt from wheels/.
RUN set -eu; . /tmp/build/plan; \
    mkdir -p /tmp/build/sdist; \
    sdist="/tmp/build/wheels/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz"; \
    if [ -n "$wheel" ] && [ -n "$tree" ]; then \
        echo "llama-cpp-python: wheel and llama.cpp tree prebuilt, no sdist needed"; \
    elif [ -f "$sdist" ]; then \
        cp "$sdist" /tmp/build/sdist/; \
    else \
        sh /tmp/build/build-helper.sh pip download --no-deps --no-binary :all: "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -d /tmp/build/sdist; \
    fi; \
    ls -l /tmp/build/sdist

# torch: a matching wheel from wheels/ if there is one (e.g. a CPU build), else the package index.
RUN set -eu; \
    printf 'torch==%s\nllama-cpp-python==%s\n' "$TORCH_VERSION" "$LLAMA_CPP_PYTHON_VERSION" > /tmp/build/pins.txt; \
    sh /tmp/build/build-helper.sh pip-install "torch==${TORCH_VERSION}"; \
    pip list 2>/dev/null | grep -i '^torch '

# llama-cpp-python: the CPU wheel from wheels/ when GGML_CUDA=off and one is there, else built from the sdist.
RUN set -eu; . /tmp/build/plan; \
    if [ -n "$wheel" ]; then \
        echo "llama-cpp-python: prebuilt wheel $wheel"; \
        sh /tmp/build/build-helper.sh pip-install "$wheel"; \
    else \
        export CMAKE_ARGS="-DGGML_CUDA=${GGML_CUDA} -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"; \
        if [ -n "$CUDA_ARCHITECTURES" ]; then CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES"; fi; \
        echo "llama-cpp-python: building from the sdist with CMAKE_ARGS=$CMAKE_ARGS"; \
        sh /tmp/build/build-helper.sh pip install --verbose --find-links /tmp/build/wheels /tmp/build/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz; \
    fi

# The project with gguf-tool's extras (images/build.sh passes what the registry of sets names), at the
# project's pinned versions.
ARG EXTRA=gguf
COPY pyproject.toml constraints.txt README.md /tmp/build/src/
COPY tools/ /tmp/build/src/tools/
COPY driver/ /tmp/build/src/driver/
RUN set -eu; \
    sh /tmp/build/build-helper.sh pip-install -c /tmp/build/src/constraints.txt -c /tmp/build/pins.txt \
        "/tmp/build/src[${EXTRA}]"; \
    pip freeze > /opt/venv/pip-freeze.txt

# llama.cpp's converter files (convert_hf_to_gguf.py, conversion/, gguf-py/...) from the same sdist,
# and llama-quantize / llama-imatrix built from it (static; CUDA like the library). CPU builds take the
# tree prebuilt from wheels/llama.cpp-tree-<version>.tar.gz when it is there (packed from a host's
# `gguf-tool setup --with-tools` by images/prefill-wheelhouse.sh): llama.cpp is not compiled twice.
RUN set -eu; . /tmp/build/plan; \
    if [ -n "$tree" ]; then \
        echo "llama.cpp tree: prebuilt $tree"; \
        mkdir -p /opt/llama.cpp; \
        tar -C /opt/llama.cpp --no-same-owner -xzf "$tree"; \
    else \
        CMAKE_ARGS="-DGGML_CUDA=${GGML_CUDA}${CUDA_ARCHITECTURES:+ -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES}" \
        UPLOAD_DRIVER_LLAMA_CPP_DIR=/opt/llama.cpp \
            gguf-tool setup --with-tools --sdist /tmp/build/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz; \
    fi; \
    for t in llama-quantize llama-imatrix; do \
        [ -x /opt/llama.cpp/bin/$t ] || { echo "no /opt/llama.cpp/bin/$t" >&2; exit 1; }; \
    done; \
    rc=0; /opt/llama.cpp/bin/llama-quantize --help > /tmp/build/quantize.txt 2>&1 || rc=$?; \
    if [ $rc -gt 1 ] || ! grep -qi usage /tmp/build/quantize.txt; then \
        echo "llama-quantize --help exited with $rc:" >&2; cat /tmp/build/quantize.txt >&2; exit 1; \
    fi; \
    UPLOAD_DRIVER_LLAMA_CPP_DIR=/opt/llama.cpp python /opt/llama.cpp/convert_hf_to_gguf.py --help > /dev/null; \
    python -m compileall -q /opt/llama.cpp; \
    gguf-tool --help > /dev/null

# ---------------------------------------------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime
# names this project's stages, so that build.sh can remove the ones a newer build left untagged
LABEL upload-driver.stage="runtime"

ARG PYTHON_VERSION=3.11

# The venv's interpreter, OpenMP for llama.cpp's CPU backend, tini as PID 1. Nothing else.
# (The same layer as in python-tool.Dockerfile: images on one base share it.)
COPY --from=build /tmp/build/build-helper.sh /tmp/build-helper.sh
RUN set -eu; \
    sh /tmp/build-helper.sh apt-ensure ca-certificates python${PYTHON_VERSION} libgomp1 tini; \
    sh /tmp/build-helper.sh add-user; \
    rm /tmp/build-helper.sh

ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ARG TORCH_VERSION=2.13.0
ARG GGML_CUDA=on

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/llama.cpp /opt/llama.cpp

ENV PATH=/opt/venv/bin:$PATH \
    UPLOAD_DRIVER_LLAMA_CPP_DIR=/opt/llama.cpp \
    HOME=/work/home \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Last, so that a new revision only rebuilds the metadata layers.
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=upload-driver
LABEL org.opencontainers.image.title="gguf-tool" \
      org.opencontainers.image.description="upload-driver step: convert a Hugging Face model folder to GGUF with llama.cpp, quantize and validate every file" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      upload-driver.llama-cpp-python.version="${LLAMA_CPP_PYTHON_VERSION}" \
      upload-driver.torch.version="${TORCH_VERSION}" \
      upload-driver.python.version="${PYTHON_VERSION}" \
      upload-driver.ggml-cuda="${GGML_CUDA}"

USER 1000:1000
WORKDIR /work
ENTRYPOINT ["tini", "--", "gguf-tool"]
CMD ["--help"]
