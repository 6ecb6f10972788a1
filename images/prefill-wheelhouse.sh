#!/usr/bin/env bash
# Fill a wheelhouse on the host so that image builds install offline and fast (images/build.sh --wheelhouse DIR).
#
#   images/prefill-wheelhouse.sh [--python PY] [--no-tree] DIR
#
#   DIR           the wheelhouse (made if missing; files already there are kept and not fetched again)
#   --python PY   the Python whose pip downloads and whose llama.cpp tree is packed
#                 (default: the repo's .venv/bin/python, else python3)
#   --no-tree     do not pack the host's llama.cpp tree
#
# What it puts in DIR:
#   - every dependency of the extras the tool images install (the registry's:
#     `python -m upload_common.registry_cli extras --images`, the extras they include expanded)
#     and the project's build backend (setuptools), at the pins of constraints.txt: `pip download`, so with this
#     host's pip configuration (torch: the CPU build, TORCH_VERSION); and what `merge-tool setup` installs
#     without dependencies (its `--print` list: llmcompressor);
#   - torch-<TORCH_VERSION>*.whl explicitly (`pip download torch==... --no-deps`);
#   - llama_cpp_python-<LLAMA_CPP_PYTHON_VERSION>.tar.gz, the sdist (converter and library come from it);
#   - llama_cpp_python-<version>-*.whl, the wheel pip built on this host (found in pip's cache;
#     `make test` builds it with -DGGML_NATIVE=OFF), used by CPU gguf-tool builds instead of compiling;
#   - llama.cpp-tree-<version>.tar.gz: the host's set-up llama.cpp tree (`gguf-tool setup --with-tools`,
#     `make llama-tools`, or built by the first gguf-tool step that needed an importance matrix:
#     converter, gguf-py, bin/llama-quantize, bin/llama-imatrix), used by CPU gguf-tool builds instead of
#     compiling llama-quantize and llama-imatrix again.
# The wheels fit a base whose Python and glibc match this host's (a Debian 12 host and a bookworm base).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "prefill-wheelhouse.sh: $*" >&2; exit 2; }
say() { echo "prefill-wheelhouse.sh: $*"; }

python="" tree=1 dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --python) [ $# -ge 2 ] || die "$1 needs a value"; python=$2; shift ;;
        --python=*) python=${1#*=} ;;
        --no-tree) tree=0 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$dir" ] || die "one wheelhouse folder only"; dir=$1 ;;
    esac
    shift
done
[ -n "$dir" ] || die "name the wheelhouse folder (see --help)"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# the pinned versions (a key already set in the environment wins, as in build.sh)
for key in TORCH_VERSION LLAMA_CPP_PYTHON_VERSION; do
    if [ -z "${!key:-}" ]; then
        eval "$key=\"$(sed -n "s/^$key=//p" "$here/versions.env")\""
    fi
    [ -n "${!key}" ] || die "no $key in images/versions.env"
done
start=$SECONDS

# The requirements of the extras the images install (self-references expanded), plus the build backend.
reqs=$(mktemp) pins=$(mktemp)
trap 'rm -f "$reqs" "$pins"' EXIT
image_extras=$(PYTHONPATH="$root/tools" "$python" -m upload_common.registry_cli extras --images) \
    || die "cannot read the images' extras from the registry (tools/upload_common/sets.py)"
"$python" - "$root/pyproject.toml" "$image_extras" > "$reqs" <<'EOF'
import re, sys, tomllib
data = tomllib.load(open(sys.argv[1], "rb"))
name = data["project"]["name"]
extras = data["project"].get("optional-dependencies", {})
out = list(data["build-system"]["requires"]) + list(data["project"].get("dependencies", []))
todo, seen = sys.argv[2].split(","), set()
while todo:
    extra = todo.pop(0).strip()
    if not extra or extra in seen:
        continue
    seen.add(extra)
    for req in extras[extra]:
        own = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*\[([^\]]*)\]\s*", req)
        if own and own.group(1).replace("_", "-") == name:
            todo += own.group(2).split(",")
        else:
            out.append(req)
print("\n".join(dict.fromkeys(out)))
EOF
printf 'torch==%s\nllama-cpp-python==%s\n' "$TORCH_VERSION" "$LLAMA_CPP_PYTHON_VERSION" > "$pins"
say "pip download: $(tr '\n' ' ' < "$reqs")"
"$python" -m pip download -q -d "$dir" -c "$root/constraints.txt" -c "$pins" -r "$reqs"
# what pip cannot resolve with the project's pins (llm-compressor), as `merge-tool setup` installs it
nodeps=$("$python" -m merge_tool.cli setup --print) || die "$python -m merge_tool.cli setup --print failed: is the project installed there?"
# shellcheck disable=SC2086
[ -z "$nodeps" ] || "$python" -m pip download -q --no-deps -d "$dir" $nodeps

ls "$dir"/torch-"$TORCH_VERSION"[-+]*.whl >/dev/null 2>&1 \
    || "$python" -m pip download -q --no-deps -d "$dir" "torch==$TORCH_VERSION"
sdist=$dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz
[ -f "$sdist" ] || "$python" -m pip download -q --no-deps --no-binary :all: -d "$dir" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
[ -f "$sdist" ] || die "no $sdist after pip download"

# The wheel pip built on this host (its cache of built wheels), newest first.
if ! ls "$dir"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl >/dev/null 2>&1; then
    cache=$("$python" -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")
    wheel=$(find "$cache" "$HOME/.cache/pip" -name "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-*.whl" -printf '%T@ %p\n' 2>/dev/null \
            | sort -rn | head -n1 | cut -d' ' -f2-)
    if [ -n "$wheel" ]; then
        cp "$wheel" "$dir/"
        say "host-built wheel: $wheel"
    else
        say "no llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-*.whl in pip's cache: CPU gguf-tool builds will compile it"
    fi
fi

# The host's llama.cpp tree (converter + bin/llama-quantize + bin/llama-imatrix), packed once.
if [ "$tree" = 1 ]; then
    tarball=$dir/llama.cpp-tree-$LLAMA_CPP_PYTHON_VERSION.tar.gz
    src=$("$python" -c 'from gguf_tool.llama_tree import tree_dir; print(tree_dir())' 2>/dev/null || true)
    have=$("$python" -c 'from importlib.metadata import version; print(version("llama-cpp-python"))' 2>/dev/null || true)
    if [ -z "$src" ] || [ "$have" != "$LLAMA_CPP_PYTHON_VERSION" ]; then
        say "no llama.cpp tree of llama-cpp-python $LLAMA_CPP_PYTHON_VERSION in $python (it has '${have:-none}'): not packed"
    elif [ ! -f "$src/convert_hf_to_gguf.py" ] || [ ! -x "$src/bin/llama-quantize" ] || [ ! -x "$src/bin/llama-imatrix" ]; then
        say "$src lacks the converter or bin/llama-quantize, bin/llama-imatrix (run \`gguf-tool setup --with-tools\`): not packed"
    elif [ -f "$tarball" ] && [ -z "$(find "$src" -newer "$tarball" -print -quit)" ]; then
        say "$(basename "$tarball") is up to date"
    else
        tar --exclude=__pycache__ --exclude='*.pyc' --owner=0 --group=0 --numeric-owner \
            -C "$src" -czf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        say "packed $src into $(basename "$tarball")"
    fi
fi

say "$dir: $(find "$dir" -maxdepth 1 -type f | wc -l) files, $(du -sh "$dir" | cut -f1), in $((SECONDS - start)) s"
