# gguf-tool: Hugging Face folder -> GGUF files (llama.cpp converter + quantizer), validated.
#
# Build it with images/build.sh, which stages the build context (project sources, optional wheels/ and
# certs/) in images/.build/gguf-tool/ and passes the pinned versions of images/versions.env:
#
#   images/build.sh gguf-tool                                            # CUDA (default)
#   images/build.sh --cpu --base-image debian:bookworm-slim gguf-tool    # CPU / CI
#
# The ARG defaults below repeat images/versions.env (build.sh checks that they agree).
# Context layout:  pyproject.toml constraints.txt README.md tools/ driver/
#                  wheels/  optional wheelhouse: torch-<TORCH_VERSION>*.whl, llama_cpp_python-* wheel/sdist
#                  certs/   optional CA bundle for TLS-intercepting proxies (build time only)

ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04
ARG BUILD_BASE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION}
ARG RUNTIME_BASE=nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}

# ---------------------------------------------------------------------------------------------------
FROM ${BUILD_BASE} AS build

ARG PYTHON_VERSION=3.11
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ARG TORCH_VERSION=2.13.0
# on: build llama.cpp with CUDA (needs a CUDA devel base); off: CPU build (or a CPU wheel from wheels/)
ARG GGML_CUDA=on
# e.g. "86;89;90" to build fewer CUDA kernels (faster); empty: llama.cpp's default list
ARG CUDA_ARCHITECTURES=
# a CA bundle inside the build context (e.g. certs/ca.crt) for pip behind a TLS-intercepting proxy
ARG CA_BUNDLE=

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY certs/ /tmp/build/certs/
COPY wheels/ /tmp/build/wheels/

# /tmp/build/env: sourced by every RUN that talks to the package index.
# /tmp/build/apt-ensure PKG...: installs the packages the base image lacks (Debian and Ubuntu bases).
RUN set -eu; \
    : > /tmp/build/env; \
    if [ -n "$CA_BUNDLE" ]; then \
        cert="/tmp/build/certs/${CA_BUNDLE#certs/}"; \
        [ -f "$cert" ] || { echo "CA_BUNDLE=$CA_BUNDLE: no such file under certs/ in the build context" >&2; exit 1; }; \
        printf 'export PIP_CERT=%s SSL_CERT_FILE=%s\n' "$cert" "$cert" > /tmp/build/env; \
    fi; \
    printf '%s\n' '#!/bin/sh' 'set -eu' 'missing=""' \
        'for p in "$@"; do dpkg-query -W -f="\${Status}" "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"; done' \
        '[ -z "$missing" ] && exit 0' \
        'apt-get update' \
        'apt-get install -y --no-install-recommends $missing' \
        'apt-get clean' \
        'rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin' > /tmp/build/apt-ensure; \
    chmod +x /tmp/build/apt-ensure

# Python, and the compilers only when llama.cpp is compiled here (CUDA, or no CPU wheel in wheels/).
RUN set -eu; \
    # build-essential and cmake always: llama-quantize and llama-imatrix are compiled below
    pkgs="ca-certificates python${PYTHON_VERSION} python${PYTHON_VERSION}-venv build-essential cmake"; \
    if [ "$GGML_CUDA" != "off" ] || ! ls /tmp/build/wheels/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}-*.whl >/dev/null 2>&1; then \
        pkgs="$pkgs python${PYTHON_VERSION}-dev git"; \
    fi; \
    /tmp/build/apt-ensure $pkgs; \
    python${PYTHON_VERSION} -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH

# The llama-cpp-python sdist: both the library and the converter come from it (one llama.cpp commit).
RUN set -eu; . /tmp/build/env; \
    mkdir -p /tmp/build/sdist; \
    sdist="/tmp/build/wheels/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz"; \
    if [ -f "$sdist" ]; then \
        cp "$sdist" /tmp/build/sdist/; \
    else \
        pip download --no-deps --no-binary :all: "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -d /tmp/build/sdist; \
    fi; \
    ls -l /tmp/build/sdist

# torch: a matching wheel from wheels/ if there is one (e.g. a CPU build), else the package index.
RUN set -eu; . /tmp/build/env; \
    printf 'torch==%s\nllama-cpp-python==%s\n' "$TORCH_VERSION" "$LLAMA_CPP_PYTHON_VERSION" > /tmp/build/pins.txt; \
    pip install --find-links /tmp/build/wheels "torch==${TORCH_VERSION}"; \
    pip list 2>/dev/null | grep -i '^torch '

# llama-cpp-python: the CPU wheel from wheels/ when GGML_CUDA=off and one is there, else built from the sdist.
RUN set -eu; . /tmp/build/env; \
    wheel=$(ls /tmp/build/wheels/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}-*.whl 2>/dev/null | head -n1 || true); \
    if [ "$GGML_CUDA" = "off" ] && [ -n "$wheel" ]; then \
        echo "llama-cpp-python: prebuilt wheel $wheel"; \
        pip install "$wheel"; \
    else \
        export CMAKE_ARGS="-DGGML_CUDA=${GGML_CUDA} -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"; \
        if [ -n "$CUDA_ARCHITECTURES" ]; then CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES"; fi; \
        echo "llama-cpp-python: building from the sdist with CMAKE_ARGS=$CMAKE_ARGS"; \
        pip install --verbose /tmp/build/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz; \
    fi

# The project with gguf-tool's extra, at the project's pinned versions.
COPY pyproject.toml constraints.txt README.md /tmp/build/src/
COPY tools/ /tmp/build/src/tools/
COPY driver/ /tmp/build/src/driver/
RUN set -eu; . /tmp/build/env; \
    pip install --find-links /tmp/build/wheels -c /tmp/build/src/constraints.txt -c /tmp/build/pins.txt \
        "/tmp/build/src[gguf]"; \
    pip freeze > /opt/venv/pip-freeze.txt

# llama.cpp's converter files (convert_hf_to_gguf.py, conversion/, gguf-py/...) from the same sdist,
# and llama-quantize / llama-imatrix built from it (static; CUDA like the library).
RUN set -eu; \
    CMAKE_ARGS="-DGGML_CUDA=${GGML_CUDA}${CUDA_ARCHITECTURES:+ -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES}" \
    UPLOAD_DRIVER_LLAMA_CPP_DIR=/opt/llama.cpp \
        gguf-tool setup --with-tools --sdist /tmp/build/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz; \
    /opt/llama.cpp/bin/llama-quantize --help > /dev/null 2>&1 || test $? -le 1; \
    python -m compileall -q /opt/llama.cpp; \
    gguf-tool --help > /dev/null

# ---------------------------------------------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime

ARG PYTHON_VERSION=3.11
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ARG TORCH_VERSION=2.13.0
ARG GGML_CUDA=on

# The venv's interpreter, OpenMP for llama.cpp's CPU backend, tini as PID 1. Nothing else.
COPY --from=build /tmp/build/apt-ensure /usr/local/sbin/apt-ensure
RUN set -eu; \
    DEBIAN_FRONTEND=noninteractive apt-ensure ca-certificates python${PYTHON_VERSION} libgomp1 tini; \
    rm /usr/local/sbin/apt-ensure; \
    existing=$(getent passwd 1000 | cut -d: -f1 || true); \
    if [ -n "$existing" ] && [ "$existing" != app ]; then userdel --remove "$existing" 2>/dev/null || userdel "$existing"; fi; \
    getent group 1000 >/dev/null || groupadd --gid 1000 app; \
    id app >/dev/null 2>&1 || useradd --uid 1000 --gid 1000 --no-create-home --home-dir /work/home --shell /bin/sh app; \
    mkdir -p /work/in /work/out /work/home; \
    chown 1000:1000 /work /work/in /work/out /work/home; \
    chmod 1777 /work/out /work/home

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
