#!/usr/bin/env bash
# Build the tool images: upload-driver/<tool>:<project version> (also tagged <version>-cpu / -cuda).
#
#   images/build.sh [--cpu|--cuda] [--base-image NAME] [--ca-bundle FILE] [--wheelhouse DIR] [TOOL...]
#
#   --cuda              (default) CUDA devel/runtime bases from images/versions.env, GGML_CUDA=on
#   --cpu               GGML_CUDA=off on a plain Debian/Python base (--base-image, default CPU_BASE)
#   --base-image NAME   base image for both stages (with --cuda it replaces both CUDA bases)
#   --ca-bundle FILE    CA bundle that pip inside the build must trust (TLS-intercepting proxies);
#                       build time only, it does not end up in the image
#   --wheelhouse DIR    local wheels/sdists the build may use: torch-<TORCH_VERSION>*.whl,
#                       llama_cpp_python-<version>-*.whl (CPU builds) and llama_cpp_python-<version>.tar.gz
#   --no-cache          passed to docker build
#   TOOL...             images to build (default: every images/<tool>.Dockerfile)
#
# Each tool's context is staged in images/.build/<tool>/ (git-ignored): the project sources plus
# wheels/ and certs/, filtered by the root .dockerignore. Pinned versions come from images/versions.env.
# DOCKER (default: docker) names the client binary.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DOCKER=${DOCKER:-docker}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "build.sh: $*" >&2; exit 2; }

variant=cuda base_image="" ca_bundle="" wheelhouse="" no_cache=() tools=()
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) variant=cpu ;;
        --cuda) variant=cuda ;;
        --base-image) [ $# -ge 2 ] || die "$1 needs a value"; base_image=$2; shift ;;
        --base-image=*) base_image=${1#*=} ;;
        --ca-bundle) [ $# -ge 2 ] || die "$1 needs a value"; ca_bundle=$2; shift ;;
        --ca-bundle=*) ca_bundle=${1#*=} ;;
        --wheelhouse) [ $# -ge 2 ] || die "$1 needs a value"; wheelhouse=$2; shift ;;
        --wheelhouse=*) wheelhouse=${1#*=} ;;
        --no-cache) no_cache=(--no-cache) ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) tools+=("$1") ;;
    esac
    shift
done
[ -z "$ca_bundle" ] || [ -f "$ca_bundle" ] || die "--ca-bundle $ca_bundle: no such file"
[ -z "$wheelhouse" ] || [ -d "$wheelhouse" ] || die "--wheelhouse $wheelhouse: no such folder"

# --- pinned versions: KEY=value lines; a key already set in the environment wins ----------------
version_keys=()
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    key=${line%%=*}
    [[ "$key" =~ ^[A-Z_][A-Z0-9_]*$ ]] || die "images/versions.env: bad line: $line"
    version_keys+=("$key")
    if [ -z "${!key+set}" ]; then
        eval "$key=\"${line#*=}\""
    fi
done < "$here/versions.env"

project_version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root/pyproject.toml" | head -n1)
[ -n "$project_version" ] || die "no version in pyproject.toml"
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git -C "$root" status --porcelain -- tools driver pyproject.toml constraints.txt 2>/dev/null)" ]; then
    revision="$revision-dirty"
fi
source_url=$(git -C "$root" remote get-url origin 2>/dev/null || echo upload-driver)

case "$variant" in
    cuda)
        build_base=${base_image:-$CUDA_DEVEL_BASE}
        runtime_base=${base_image:-$CUDA_RUNTIME_BASE}
        ggml_cuda=on ;;
    cpu)
        build_base=${base_image:-${CPU_BASE:?set CPU_BASE in images/versions.env or pass --base-image}}
        runtime_base=$build_base
        ggml_cuda=off ;;
esac

if [ ${#tools[@]} -eq 0 ]; then
    for f in "$here"/*.Dockerfile; do tools+=("$(basename "$f" .Dockerfile)"); done
fi

# The Dockerfile's ARG defaults must say what versions.env says (they serve plain `docker build`).
check_defaults() {
    local dockerfile=$1 key want got
    for key in "${version_keys[@]}" BUILD_BASE RUNTIME_BASE; do
        case "$key" in
            BUILD_BASE) want=$(sed -n 's/^CUDA_DEVEL_BASE=//p' "$here/versions.env") ;;
            RUNTIME_BASE) want=$(sed -n 's/^CUDA_RUNTIME_BASE=//p' "$here/versions.env") ;;
            *) want=$(sed -n "s/^$key=//p" "$here/versions.env") ;;
        esac
        for got in $(sed -n "s/^ARG $key=//p" "$dockerfile"); do
            # a tool whose image is not CUDA-based keeps its own base defaults
            case "$key:$got" in BUILD_BASE:*|RUNTIME_BASE:*) [[ "$got" == nvidia/cuda:* ]] || continue ;; esac
            [ "$got" = "$want" ] || die "$dockerfile: ARG $key=$got but images/versions.env says $want"
        done
    done
}

# Stage the context: sources (minus what .dockerignore drops), wheels/, certs/.
stage_context() {
    local tool=$1 ctx=$here/.build/$1 f
    mkdir -p "$here/.build"
    printf '*\n' > "$here/.build/.gitignore"
    rm -rf "$ctx"
    mkdir -p "$ctx/wheels" "$ctx/certs"
    cp "$root/pyproject.toml" "$root/constraints.txt" "$root/README.md" "$root/.dockerignore" "$ctx/"
    cp -r "$root/tools" "$root/driver" "$ctx/"
    touch "$ctx/wheels/.keep" "$ctx/certs/.keep"
    if [ -n "$wheelhouse" ]; then
        for f in "$wheelhouse"/torch-"$TORCH_VERSION"[-+]*.whl \
                 "$wheelhouse"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl \
                 "$wheelhouse"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz; do
            [ -f "$f" ] || continue
            ln "$f" "$ctx/wheels/" 2>/dev/null || cp "$f" "$ctx/wheels/"
            echo "build.sh: wheelhouse: $(basename "$f")"
        done
    fi
    if [ -n "$ca_bundle" ]; then
        cp "$ca_bundle" "$ctx/certs/ca.crt"
    fi
}

for tool in "${tools[@]}"; do
    dockerfile=$here/$tool.Dockerfile
    [ -f "$dockerfile" ] || die "no images/$tool.Dockerfile (tools: $(cd "$here" && ls *.Dockerfile | sed 's/\.Dockerfile$//' | tr '\n' ' '))"
    check_defaults "$dockerfile"
    stage_context "$tool"
    cp "$dockerfile" "$here/.build/$tool/Dockerfile"

    args=()
    for key in "${version_keys[@]}"; do
        # only the ARGs this Dockerfile declares (the base keys reach it as BUILD_BASE/RUNTIME_BASE)
        if grep -Eq "^ARG $key(=|\s|$)" "$dockerfile"; then args+=(--build-arg "$key=${!key}"); fi
    done
    args+=(--build-arg "BUILD_BASE=$build_base" --build-arg "RUNTIME_BASE=$runtime_base"
           --build-arg "GGML_CUDA=$ggml_cuda"
           --build-arg "VERSION=$project_version" --build-arg "REVISION=$revision"
           --build-arg "SOURCE=$source_url")
    [ -z "$ca_bundle" ] || args+=(--build-arg "CA_BUNDLE=certs/ca.crt")
    [ -z "${CUDA_ARCHITECTURES:-}" ] || args+=(--build-arg "CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES")

    image=upload-driver/$tool
    echo "build.sh: $image:$project_version ($variant; build base $build_base, runtime base $runtime_base)"
    start=$SECONDS
    "$DOCKER" build --network host --force-rm "${no_cache[@]}" \
        -f "$here/.build/$tool/Dockerfile" \
        -t "$image:$project_version" -t "$image:$project_version-$variant" \
        "${args[@]}" "$here/.build/$tool"
    echo "build.sh: built $image:$project_version and $image:$project_version-$variant in $((SECONDS - start)) s"
done
