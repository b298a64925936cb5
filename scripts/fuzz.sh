#!/usr/bin/env bash
# Runs offstate's coverage-guided fuzz targets (fuzz/) for a bounded time.
#
#   scripts/fuzz.sh TARGET|all SECONDS [extra libFuzzer flags...]
#   scripts/fuzz.sh TARGET|all build    # build only (CI builds while tests run)
#
# Builds the libFuzzer binaries directly with the sanitizer-coverage flags
# cargo-fuzz passes (minus ASan: the code under test is safe Rust), on the
# stable toolchain via RUSTC_BOOTSTRAP=1, into fuzz/target. Each target
# starts from its committed seed corpus, fuzz/corpus/<target>/ (never
# written to); new inputs go to fuzz/work/<target>/ and crash inputs to
# fuzz/artifacts/<target>/. Exits non-zero on any crash, leak or timeout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if [ $# -lt 2 ]; then
    echo "usage: scripts/fuzz.sh TARGET|all SECONDS|build [libFuzzer flags...]" >&2
    exit 2
fi
which_target="$1"
seconds="$2"
shift 2

all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^offstate-fuzz$')
if [ "$which_target" = all ]; then
    targets="$all_targets"
else
    if ! grep -qx "$which_target" <<<"$all_targets"; then
        echo "unknown fuzz target '$which_target'; known: $(echo $all_targets)" >&2
        exit 2
    fi
    targets="$which_target"
fi

export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="$root/fuzz/target"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros,
# which must not be instrumented (they are not linked with libFuzzer).
host="$(rustc -vV | sed -n 's/^host: //p')"
bins=()
for t in $targets; do bins+=(--bin "$t"); done
echo "==> building fuzz targets: $(echo $targets)"
cargo build --release --locked --target "$host" "${bins[@]}"
if [ "$seconds" = build ]; then
    exit 0
fi

failed=()
for t in $targets; do
    mkdir -p "work/$t" "artifacts/$t"
    echo "==> fuzzing $t for ${seconds}s"
    if ! "$CARGO_TARGET_DIR/$host/release/$t" \
        -max_total_time="$seconds" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -max_len=4096 \
        -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" \
        "$@" \
        "work/$t" "corpus/$t"; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "==> fuzzing passed: $(echo $targets)"
