#!/usr/bin/env bash
# Build the tool images: upload-driver/<tool>:<project version> (also tagged <version>-cpu / -cuda).
#
#   images/build.sh [--cpu|--cuda] [--base-image NAME] [--ca-bundle FILE] [--wheelhouse DIR] [TOOL...]
#   images/build.sh --print-versions
#
#   --cuda              (default) GPU steps (gguf-tool, merge-tool) on the CUDA devel/runtime bases of
#                       images/versions.env, GGML_CUDA=on, torch from the index; the other tools on CPU_BASE
#   --cpu               every image on a plain Debian/Python base (--base-image, default CPU_BASE),
#                       GGML_CUDA=off, torch from the wheelhouse when it has it
#   --base-image NAME   base image for both stages (with --cuda it replaces the CUDA bases; the CPU-only
#                       tools then still use CPU_BASE: `CPU_BASE=NAME images/build.sh` changes that)
#   --ca-bundle FILE    CA bundle that pip inside the build must trust (TLS-intercepting proxies);
#                       build time only, it does not end up in the image
#   --wheelhouse DIR    local wheels/sdists the builds install from (--find-links; offline when it holds
#                       everything): fill it with images/prefill-wheelhouse.sh DIR
#   --no-cache          passed to docker build
#   --unsloth           (with --cuda, merge-tool only) merge-tool's Unsloth image, upload-driver/merge-tool:<version>-
#                       unsloth-cuda: its extra plus merge-unsloth, installed with constraints-unsloth.txt (Unsloth pins
#                       an older transformers); the driver runs it when a run config sets merge.engine = "unsloth".
#                       --unsloth-cuda: the same as --cuda --unsloth (the image's variant name)
#   --stage-only        stage each tool's context and write what its build needs to
#                       images/.build/<tool>/build.outputs (GitHub step-output lines: tool, variant, default,
#                       version, context, file, target, build-args), then stop: no docker, no image
#                       (.github/workflows/images.yml builds from it with buildx)
#   --print-versions    print the pinned versions (KEY=value, versions.env's keys as build.sh resolves them) and stop
#   TOOL...             images to build (default: all four, in the order of the table below)
#
# Afterwards the images an earlier build of this project left untagged are removed (only those carrying
# its upload-driver.stage label: other images are not touched).
#
# Each tool's context is staged in images/.build/<tool>/ (git-ignored): the project sources,
# build-helper.sh, wheels/ (the wheelhouse files that tool can use) and certs/, filtered by the root
# .dockerignore. Pinned versions come from images/versions.env. DOCKER (default: docker) names the client;
# PYTHON (default: python3, 3.10 or later) reads each tool's extras from the registry of sets.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DOCKER=${DOCKER:-docker}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "build.sh: $*" >&2; exit 2; }

variant=cuda base_image="" ca_bundle="" wheelhouse="" no_cache=() tools=() stage_only="" print_versions="" unsloth=""
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
        --unsloth) unsloth=yes ;;
        --unsloth-cuda) variant=cuda unsloth=yes ;;
        --stage-only) stage_only=yes ;;
        --print-versions) print_versions=yes ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) tools+=("$1") ;;
    esac
    shift
done
[ -z "$ca_bundle" ] || [ -f "$ca_bundle" ] || die "--ca-bundle $ca_bundle: no such file"
if [ -n "$unsloth" ]; then
    [ "$variant" = cuda ] || die "--unsloth: Unsloth runs on a CUDA GPU only: build it with --cuda"
    [ ${#tools[@]} -eq 0 ] && tools=(merge-tool)
    for tool in "${tools[@]}"; do
        [ "$tool" = merge-tool ] || die "--unsloth: only merge-tool has an Unsloth image, not $tool"
    done
fi
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
if [ -n "$print_versions" ]; then
    for key in "${version_keys[@]}"; do echo "$key=${!key}"; done
    exit 0
fi

project_version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root/pyproject.toml" | head -n1)
[ -n "$project_version" ] || die "no version in pyproject.toml"
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git -C "$root" status --porcelain -- tools driver images pyproject.toml constraints.txt 2>/dev/null)" ]; then
    revision="$revision-dirty"
fi
source_url=$(git -C "$root" remote get-url origin 2>/dev/null || echo upload-driver)

# tool | Dockerfile | bases: gpu (follows --cuda/--cpu) or cpu (always a CPU base) | torch
# A tool's extras come from the registry of sets (the union of its rows' extras), not from this table.
tool_table='
gguf-tool    | gguf-tool.Dockerfile   | gpu | yes
merge-tool   | python-tool.Dockerfile | gpu | yes
docs-tool    | python-tool.Dockerfile | cpu | no
hf-push-tool | python-tool.Dockerfile | cpu | no
'
all_tools=$(echo "$tool_table" | awk -F'|' 'NF > 1 { gsub(/ /, "", $1); print $1 }')
tool_field() {  # tool_field TOOL N: column N of TOOL's row
    echo "$tool_table" | awk -F'|' -v t="$1" -v n="$2" '{ gsub(/ /, "", $1) } $1 == t { gsub(/ /, "", $n); print $n }'
}
tool_extras() {  # the extras TOOL needs, comma-separated: upload_common.registry_cli, standard library only
    PYTHONPATH="$root/tools" "${PYTHON:-python3}" -m upload_common.registry_cli extras "$1" \
        || die "cannot read $1's extras from the registry (tools/upload_common/sets.py)"
}

cpu_base=${CPU_BASE:?set CPU_BASE in images/versions.env or pass --base-image}
case "$variant" in
    cpu) cpu_base=${base_image:-$cpu_base} ;;
esac

if [ ${#tools[@]} -eq 0 ]; then
    read -r -a tools <<< "$(echo $all_tools)"
fi
for tool in "${tools[@]}"; do
    [ -n "$(tool_field "$tool" 2)" ] || die "unknown tool $tool (tools: $(echo $all_tools))"
done

# The Dockerfile's ARG defaults must say what versions.env says (they serve plain `docker build`).
check_defaults() {
    local dockerfile=$1 key want got
    for key in "${version_keys[@]}" BUILD_BASE RUNTIME_BASE; do
        for got in $(sed -n "s/^ARG $key=//p" "$dockerfile"); do
            # a base default is either the CUDA base or CPU_BASE (versions.env as written, ${...} unexpanded)
            case "$key:$got" in
                BUILD_BASE:nvidia/cuda:*) want=$(sed -n 's/^CUDA_DEVEL_BASE=//p' "$here/versions.env") ;;
                RUNTIME_BASE:nvidia/cuda:*) want=$(sed -n 's/^CUDA_RUNTIME_BASE=//p' "$here/versions.env") ;;
                BUILD_BASE:*|RUNTIME_BASE:*) want=$(sed -n 's/^CPU_BASE=//p' "$here/versions.env") ;;
                *) want=$(sed -n "s/^$key=//p" "$here/versions.env") ;;
            esac
            [ "$got" = "$want" ] || die "$dockerfile: ARG $key=$got but images/versions.env says $want"
        done
    done
}

# Stage the context: sources (minus what .dockerignore drops), build-helper.sh, wheels/, certs/.
# wheels/ gets what the tool can use: llama.cpp files only for gguf-tool, torch only where it is wanted.
stage_context() {
    local tool=$1 torch=$2 ctx=$here/.build/$1 f name n=0
    mkdir -p "$here/.build"
    printf '*\n' > "$here/.build/.gitignore"
    rm -rf "$ctx"
    mkdir -p "$ctx/wheels" "$ctx/certs"
    cp "$root/pyproject.toml" "$root/constraints.txt" "$root/README.md" "$root/.dockerignore" \
       "$here/build-helper.sh" "$ctx/"
    cp -r "$root/tools" "$root/driver" "$ctx/"
    find "$ctx/tools" "$ctx/driver" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
    touch "$ctx/wheels/.keep" "$ctx/certs/.keep"
    if [ -n "$wheelhouse" ]; then
        for f in "$wheelhouse"/*.whl "$wheelhouse"/*.tar.gz "$wheelhouse"/*.zip; do
            [ -f "$f" ] || continue
            name=$(basename "$f")
            case "$tool:$name" in
                gguf-tool:*) ;;
                *:llama_cpp_python-*|*:llama.cpp-tree-*) continue ;;
            esac
            case "$torch:$name" in no:torch-*) continue ;; esac
            case "$name" in
                torch-*) [[ "$name" == torch-"$TORCH_VERSION"[-+]* ]] || continue ;;
                llama_cpp_python-*|llama.cpp-tree-*)
                    [[ "$name" == *-"$LLAMA_CPP_PYTHON_VERSION"[-.]* ]] || continue ;;
            esac
            ln "$f" "$ctx/wheels/" 2>/dev/null || cp "$f" "$ctx/wheels/"
            n=$((n + 1))
            case "$name" in torch-*|llama*) echo "build.sh: wheelhouse: $name" ;; esac
        done
        echo "build.sh: wheelhouse: $n files staged for $tool"
    fi
    if [ -n "$ca_bundle" ]; then
        cp "$ca_bundle" "$ctx/certs/ca.crt"
    fi
}

# write_outputs TOOL VARIANT KIND ARGS...: the build of TOOL as GitHub step outputs (--stage-only). `default`
# says whether this is the variant a plain `images/build.sh` builds (the one `<version>` alone names).
write_outputs() {
    local tool=$1 tool_variant=$2 kind=$3 ctx=$here/.build/$1 target="" out
    shift 3
    out=$ctx/build.outputs
    {
        echo "tool=$tool"
        echo "variant=$tool_variant"
        echo "default=$([ "$tool_variant" = cuda ] || [ "$kind" = cpu ] && echo true || echo false)"
        echo "version=$project_version"
        echo "context=$ctx"
        echo "file=$ctx/Dockerfile"
        echo "build-args<<END_OF_BUILD_ARGS"
        while [ $# -gt 0 ]; do
            case "$1" in
                --build-arg) echo "$2"; shift 2 ;;
                --target) target=$2; shift 2 ;;
                *) die "write_outputs: unexpected $1" ;;
            esac
        done
        echo "END_OF_BUILD_ARGS"
        echo "target=$target"
    } > "$out"
    echo "build.sh: staged $tool ($tool_variant) in $ctx; its build in $out"
}

declared() { grep -Eq "^ARG $2(=|\s|\$)" "$1"; }  # declared DOCKERFILE ARGNAME

summary=()
for tool in "${tools[@]}"; do
    dockerfile=$here/$(tool_field "$tool" 2)
    extra=$(tool_extras "$tool")
    kind=$(tool_field "$tool" 3)
    torch=$(tool_field "$tool" 4)
    [ -f "$dockerfile" ] || die "no $dockerfile"
    check_defaults "$dockerfile"

    if [ "$kind" = gpu ] && [ "$variant" = cuda ]; then
        build_base=${base_image:-$CUDA_DEVEL_BASE}
        runtime_base=${base_image:-$CUDA_RUNTIME_BASE}
        tool_variant=cuda
    else
        build_base=$cpu_base runtime_base=$cpu_base tool_variant=cpu
    fi
    ggml_cuda=$([ "$tool_variant" = cuda ] && echo on || echo off)

    stage_context "$tool" "$torch"
    cp "$dockerfile" "$here/.build/$tool/Dockerfile"
    tags=("$project_version" "$project_version-$tool_variant")
    if [ -n "$unsloth" ]; then  # its own constraints, under the name the Dockerfile reads; its own tag alone
        cp "$root/constraints-unsloth.txt" "$here/.build/$tool/constraints.txt"
        extra="$extra,merge-unsloth" tool_variant=unsloth-cuda
        tags=("$project_version-$tool_variant")
    fi

    args=()
    for key in "${version_keys[@]}"; do
        # only the ARGs this Dockerfile declares (the base keys reach it as BUILD_BASE/RUNTIME_BASE)
        declared "$dockerfile" "$key" || continue
        if [ "$key" = TORCH_VERSION ] && [ "$torch" = no ]; then
            args+=(--build-arg "TORCH_VERSION=")   # empty: the image must not contain torch
        else
            args+=(--build-arg "$key=${!key}")
        fi
    done
    args+=(--build-arg "BUILD_BASE=$build_base" --build-arg "RUNTIME_BASE=$runtime_base"
           --build-arg "VERSION=$project_version" --build-arg "REVISION=$revision"
           --build-arg "SOURCE=$source_url")
    ! declared "$dockerfile" GGML_CUDA || args+=(--build-arg "GGML_CUDA=$ggml_cuda")
    ! declared "$dockerfile" VARIANT || args+=(--build-arg "VARIANT=$tool_variant")
    ! declared "$dockerfile" TOOL || args+=(--build-arg "TOOL=$tool")
    ! declared "$dockerfile" EXTRA || args+=(--build-arg "EXTRA=$extra")
    [ -z "$ca_bundle" ] || args+=(--build-arg "CA_BUNDLE=certs/ca.crt")
    # a Dockerfile holding several tools has one final stage per tool
    if grep -Eqi "^FROM .* AS $tool\s*$" "$dockerfile"; then args+=(--target "$tool"); fi

    if [ -n "$stage_only" ]; then
        write_outputs "$tool" "$tool_variant" "$kind" "${args[@]}"
        continue
    fi
    image=upload-driver/$tool
    tag_args=()
    for tag in "${tags[@]}"; do tag_args+=(-t "$image:$tag"); done
    echo "build.sh: $image:${tags[0]} ($tool_variant; extra [$extra]; build base $build_base, runtime base $runtime_base)"
    start=$SECONDS
    "$DOCKER" build --network host --force-rm "${no_cache[@]}" \
        -f "$here/.build/$tool/Dockerfile" \
        "${tag_args[@]}" \
        "${args[@]}" "$here/.build/$tool"
    took=$((SECONDS - start))
    size=$("$DOCKER" image inspect -f '{{.Size}}' "$image:${tags[0]}" | awk '{ printf "%.0f MB", $1 / 1e6 }')
    echo "build.sh: built ${tags[*]/#/$image:} in $took s ($size)"
    summary+=("$(printf '%-40s %5s s  %s' "$image:$project_version-$tool_variant" "$took" "$size")")
done
[ -z "$stage_only" ] || exit 0
printf 'build.sh: %s\n' "${summary[@]}"
# Each build leaves the image it replaced and its build stage untagged (gigabytes a build, and a disk
# that fills up after a few dozen): remove the untagged ones that carry this project's stage label.
reclaimed=$("$DOCKER" image prune --force --filter label=upload-driver.stage | sed -n 's/^Total reclaimed space: //p')
echo "build.sh: removed this project's untagged images (${reclaimed:-0B})"
