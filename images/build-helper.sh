#!/bin/sh
# The steps every tool image's Dockerfile shares. images/build.sh copies this file into each staged
# build context; the Dockerfiles run it from /tmp/build/build-helper.sh (build stage) and, for the
# apt and user steps, from a copy in the runtime stage that is removed in the same layer.
#
#   build-helper.sh apt-ensure PKG...   install the packages the base lacks (Debian and Ubuntu bases),
#                                       leaving no package lists behind
#   build-helper.sh pip ARG...          pip, trusting the CA bundle of the CA_BUNDLE build arg if set
#   build-helper.sh pip-install ARG...  `pip install --find-links /tmp/build/wheels ARG...`: first with
#                                       --no-index (offline: a prefilled wheelhouse has everything),
#                                       then, if that fails, with the package index as well
#   build-helper.sh extra-needs PYPROJECT EXTRAS NAME
#                                       exit 0 when the project's extras (comma-separated; the project's
#                                       own extras they name included) list package NAME, else 1
#   build-helper.sh no-deps EXTRAS      pip-install --no-deps what EXTRAS (comma-separated) need but pip cannot
#                                       resolve with the project's pins: the list of `merge-tool setup --print`
#                                       (the project must be installed)
#   build-helper.sh pip-check           `pip check`, except for what `merge-tool setup --print` lists (installed
#                                       without its declared dependencies on purpose)
#   build-helper.sh add-user            user app (uid/gid 1000, no other user keeps uid 1000),
#                                       /work/{in,out,home} owned by it, out and home mode 1777
#
# Environment: CA_BUNDLE (a path inside the build context, e.g. certs/ca.crt, copied to
# /tmp/build/certs/), WHEELS (default /tmp/build/wheels).
set -eu

WHEELS=${WHEELS:-/tmp/build/wheels}

die() { echo "build-helper.sh: $*" >&2; exit 1; }

trust_ca() {
    [ -n "${CA_BUNDLE:-}" ] || return 0
    cert="/tmp/build/certs/${CA_BUNDLE#certs/}"
    [ -f "$cert" ] || die "CA_BUNDLE=$CA_BUNDLE: no such file under certs/ in the build context"
    export PIP_CERT="$cert" SSL_CERT_FILE="$cert"
}

[ $# -ge 1 ] || die "usage: build-helper.sh apt-ensure|pip|pip-install|extra-needs|no-deps|pip-check|add-user ..."
cmd=$1
shift
case "$cmd" in
    apt-ensure)
        missing=""
        for p in "$@"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
        done
        [ -n "$missing" ] || exit 0
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o Acquire::Languages=none update
        # shellcheck disable=SC2086
        apt-get install -y --no-install-recommends $missing
        apt-get clean
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
        ;;
    pip)
        trust_ca
        exec pip "$@"
        ;;
    pip-install)
        trust_ca
        if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
            if pip install --no-index --find-links "$WHEELS" "$@"; then exit 0; fi
            echo "build-helper.sh: the wheelhouse does not hold everything (see above): using the package index too" >&2
        fi
        exec pip install --find-links "$WHEELS" "$@"
        ;;
    extra-needs)
        [ $# -eq 3 ] || die "usage: build-helper.sh extra-needs PYPROJECT EXTRAS NAME"
        python3 - "$@" <<'EOF'
import re, sys, tomllib

path, extras, want = sys.argv[1:]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
project = tomllib.load(open(path, "rb"))["project"]
optional = {norm(k): v for k, v in project.get("optional-dependencies", {}).items()}
names = {norm(re.match(r"\s*([A-Za-z0-9._-]+)", r).group(1)) for r in project.get("dependencies", [])}
todo, seen = [e for e in extras.split(",") if e.strip()], set()
while todo:
    extra = norm(todo.pop().strip())
    if extra in seen:
        continue
    seen.add(extra)
    for req in optional.get(extra, []):
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", req)
        if norm(m.group(1)) == norm(project["name"]):
            todo += (m.group(2) or "").split(",")
        else:
            names.add(norm(m.group(1)))
sys.exit(0 if norm(want) in names else 1)
EOF
        ;;
    no-deps)
        [ $# -eq 1 ] || die "usage: build-helper.sh no-deps EXTRAS"
        reqs=$(merge-tool setup --print --extra "$1")
        [ -n "$reqs" ] || exit 0
        # shellcheck disable=SC2086
        exec sh "$0" pip-install --no-deps $reqs
        ;;
    pip-check)
        [ $# -eq 0 ] || die "usage: build-helper.sh pip-check"
        names=$(merge-tool setup --print | sed 's/==.*//' | paste -sd'|' -)
        problems=$(pip check 2>&1 || true)
        left=$(echo "$problems" | grep -v -i -E "^No broken requirements|^(${names:-^}) " || true)
        [ -z "$left" ] || die "pip check: $left"
        ;;
    add-user)
        existing=$(getent passwd 1000 | cut -d: -f1 || true)
        if [ -n "$existing" ] && [ "$existing" != app ]; then
            userdel --remove "$existing" 2>/dev/null || userdel "$existing"
        fi
        getent group 1000 >/dev/null || groupadd --gid 1000 app
        id app >/dev/null 2>&1 || useradd --uid 1000 --gid 1000 --no-create-home --home-dir /work/home --shell /bin/sh app
        mkdir -p /work/in /work/out /work/home
        chown 1000:1000 /work /work/in /work/out /work/home
        chmod 1777 /work/out /work/home
        ;;
    *) die "unknown command $cmd" ;;
esac
