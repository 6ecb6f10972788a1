#!/usr/bin/env bash
# Make the CPU base image without a registry: a minimal Debian from debootstrap, imported into docker.
#
#   images/make-base.sh [--force] [--cache FILE] [--mirror URL] [--security-mirror URL] [--tag NAME]
#
#   --tag NAME              image to make (default upload-driver/base-cpu:<suite>, suite bookworm)
#   --mirror URL            Debian mirror for debootstrap and for the image's bookworm and
#                           bookworm-updates suites (default: the first `URIs:` of
#                           /etc/apt/sources.list.d/debian.sources, else the first `deb` line of
#                           /etc/apt/sources.list; required when apt has none)
#   --security-mirror URL   mirror of bookworm-security (default: the one the host's apt uses for it,
#                           else MIRROR with /debian replaced by /debian-security)
#   --cache FILE            gzip'd `docker save` of the image: loaded when the image is missing and
#                           FILE exists; written after a build (and when the image exists but FILE not)
#   --force                 rebuild even when the image (or the cache file) exists
#
# Needs root (debootstrap), docker and debootstrap; about 1-2 minutes and ~115 MB. The image has
# python3 (3.11), python3-venv, ca-certificates and apt with the three suites in
# /etc/apt/sources.list, so the images' apt steps can install what else they need.
# DOCKER (default: docker) names the client binary; SUITE (default: bookworm) the Debian release.
set -euo pipefail

DOCKER=${DOCKER:-docker}
SUITE=${SUITE:-bookworm}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "make-base.sh: $*" >&2; exit 2; }
say() { echo "make-base.sh: $*"; }

tag="" mirror="" security_mirror="" cache="" force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --tag|--mirror|--security-mirror|--cache)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --tag) tag=$2 ;; --mirror) mirror=$2 ;; --security-mirror) security_mirror=$2 ;; --cache) cache=$2 ;;
            esac
            shift ;;
        --tag=*) tag=${1#*=} ;;
        --mirror=*) mirror=${1#*=} ;;
        --security-mirror=*) security_mirror=${1#*=} ;;
        --cache=*) cache=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
tag=${tag:-upload-driver/base-cpu:$SUITE}

have_image() { "$DOCKER" image inspect "$tag" >/dev/null 2>&1; }

save_cache() {
    [ -n "$cache" ] || return 0
    mkdir -p "$(dirname "$cache")"
    "$DOCKER" save "$tag" | gzip -1 > "$cache.tmp"
    mv "$cache.tmp" "$cache"
    say "saved $tag to $cache ($(du -h "$cache" | cut -f1))"
}

if [ "$force" = 0 ]; then
    if have_image; then
        say "$tag exists, nothing to do (--force rebuilds it)"
        if [ -n "$cache" ] && [ ! -f "$cache" ]; then save_cache; fi
        exit 0
    fi
    if [ -n "$cache" ] && [ -f "$cache" ]; then
        say "loading $tag from $cache"
        if "$DOCKER" load -i "$cache" && have_image; then exit 0; fi
        say "$cache did not give $tag: building it"
    fi
fi

[ "$(id -u)" = 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

# The mirrors the host's apt already uses (deb822 sources first, then the one-line format).
host_sources() {
    local f
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        case "$f" in /etc/apt/sources.list.d/debian.sources) [ -z "${seen:-}" ] || continue; seen=1 ;; esac
        cat "$f"; echo
    done
}
first_uri() {  # first URIs: of a deb822 stanza whose Suites: match $1 (a grep -E pattern)
    host_sources | awk -v want="$1" '
        /^[[:space:]]*$/ { if (uri != "" && suites ~ want) { print uri; done = 1; exit } uri = ""; suites = ""; next }
        /^URIs:/ { if (uri == "") uri = $2 }
        /^Suites:/ { suites = $0 }
        END { if (!done && uri != "" && suites ~ want) print uri }'
}
first_deb_line() {  # URL of the first `deb URL SUITE ...` line of /etc/apt/sources.list whose suite matches $1
    [ -f /etc/apt/sources.list ] || return 0
    awk -v want="$1" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                                     if ($(i+1) ~ want) { print $i; exit } }' /etc/apt/sources.list
}
if [ -z "$mirror" ]; then
    mirror=$(first_uri '.')
    [ -n "$mirror" ] || mirror=$(first_deb_line '.')
    [ -n "$mirror" ] || die "no Debian mirror in apt's sources: pass --mirror URL"
fi
if [ -z "$security_mirror" ]; then
    security_mirror=$(first_uri '-security')
    [ -n "$security_mirror" ] || security_mirror=$(first_deb_line '-security')
    if [ -z "$security_mirror" ]; then
        case "$mirror" in
            */debian|*/debian/) security_mirror=${mirror%/}-security ;;
            *) die "no bookworm-security mirror in apt's sources: pass --security-mirror URL" ;;
        esac
    fi
fi
mirror=${mirror%/} security_mirror=${security_mirror%/}

rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/upload-driver-base.XXXXXX")
trap 'rm -rf --one-file-system "$rootfs"' EXIT

say "debootstrap $SUITE from $mirror into $rootfs"
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$rootfs" "$mirror"

cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security_mirror $SUITE-security main
EOF
rm -f "$rootfs"/etc/apt/sources.list.d/*
# no package lists or downloaded .debs in the image: every apt step runs `apt-get update` first
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
mkdir -p "$rootfs/var/lib/apt/lists/partial"

tar --numeric-owner -C "$rootfs" -c . | "$DOCKER" import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$tag"
say "made $tag in $((SECONDS - start)) s ($("$DOCKER" run --rm --network none "$tag" python3 --version))"
save_cache
