#!/usr/bin/env bash
# Builds small local Docker images for the container-backed test fixtures
# from the binaries Debian installed (scripts/setup.sh), for machines with a
# Docker daemon but no registry to pull the official images from:
#
#   offstate-local/redis:7        /usr/bin/redis-server (+ redis-cli)
#   offstate-local/memcached:1.6  /usr/bin/memcached
#
# Each image is a minimal root filesystem (the binaries, the shared
# libraries `ldd` lists, the dynamic loader, /etc/passwd and /etc/group with
# root and nobody, a world-writable /tmp) brought in with `docker import`.
# The server runs as nobody in /tmp. Arguments given to `docker run` go to
# the server, as with the official images when they start with `-`.
#
# Idempotent and fast: an image whose fingerprint label (a hash of this
# script and of every file that goes in) matches is left alone.
#
# Then run the tests with:
#   OFFSTATE_REDIS_IMAGE=offstate-local/redis:7
#   OFFSTATE_MEMCACHED_IMAGE=offstate-local/memcached:1.6
set -euo pipefail

if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    echo "build-images.sh: no Docker daemon is reachable (is dockerd running, may this user use it?)" >&2
    exit 1
fi

script_hash="$(sha256sum "$0" | cut -d' ' -f1)"

# The files an image needs: the programs, the libraries they link, the loader.
files_for() {
    local program lib
    for program in "$@"; do
        printf '%s\n' "$program"
        ldd "$program" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
    done | sort -u
}

# build TAG ENTRYPOINT PORT PROGRAM...
build() {
    local tag="$1" entry="$2" port="$3"
    shift 3
    local program
    for program in "$@"; do
        if [[ ! -x "$program" ]]; then
            echo "build-images.sh: $program is missing; scripts/setup.sh installs it (apt-get install redis-server redis-tools memcached)" >&2
            exit 1
        fi
    done
    local files fingerprint current
    files="$(files_for "$@")"
    # Hash the contents (following symlinks), so an upgraded package rebuilds.
    fingerprint="$( { echo "$script_hash $tag $entry $port"; echo "$files" | xargs sha256sum; } | sha256sum | cut -d' ' -f1)"
    current="$(docker image inspect --format '{{index .Config.Labels "offstate.fingerprint"}}' "$tag" 2>/dev/null || true)"
    if [[ "$current" == "$fingerprint" ]]; then
        echo "$tag is up to date"
        return
    fi

    local previous root
    previous="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' RETURN
    mkdir -p "$root/etc" "$root/tmp" "$root/usr/bin"
    chmod 1777 "$root/tmp"
    local file
    while IFS= read -r file; do
        [[ -z "$file" ]] && continue
        mkdir -p "$root$(dirname "$file")"
        cp -L "$file" "$root$file"
    done <<<"$files"
    printf 'root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

    tar -C "$root" -c . | docker import \
        --change "ENTRYPOINT [\"$entry\"]" \
        --change "EXPOSE $port" \
        --change "USER nobody" \
        --change "WORKDIR /tmp" \
        --change "LABEL offstate.fingerprint=$fingerprint" \
        --change "LABEL offstate.built-by=scripts/build-images.sh" \
        - "$tag" >/dev/null
    # The image this one replaces, now untagged (kept if a container uses it).
    if [[ -n "$previous" ]]; then
        docker image rm "$previous" >/dev/null 2>&1 || true
    fi
    echo "built $tag"
}

build offstate-local/redis:7 /usr/bin/redis-server 6379 /usr/bin/redis-server /usr/bin/redis-cli
build offstate-local/memcached:1.6 /usr/bin/memcached 11211 /usr/bin/memcached
