#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 20), starting from the
# seed corpus in fuzz/corpus/<target>. Needs the nightly toolchain; installs cargo-fuzz when
# missing. What libFuzzer finds goes to a scratch directory, so the committed seeds stay as
# they are; a crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
#   scripts/fuzz.sh            # 20 s per target
#   scripts/fuzz.sh 600        # longer
#   FUZZ_TARGETS="jwt_claims" scripts/fuzz.sh 3600
#   FUZZ_PROFILE=release scripts/fuzz.sh 3600   # optimized, with AddressSanitizer (slow to build)
# The default profile is a debug build without sanitizer: it compiles in a few minutes on a new
# machine (CI), keeps overflow checks and debug assertions on, and finds what matters in safe
# Rust: panics, overflows, and the targets' own assertions.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_EACH=${1:-20}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
TARGETS=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
SCRATCH=$(mktemp -d /tmp/syncline-fuzz.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT

# Build once, then run the binaries directly: `cargo fuzz run` per target would re-check (and
# may rebuild) the whole crate each time.
HOST=$(rustc +nightly -vV | sed -n 's/^host: //p')
if [ "${FUZZ_PROFILE:-dev}" = release ]; then
    echo "== cargo fuzz build (release, AddressSanitizer)"
    cargo +nightly fuzz build
    BIN_DIR=${CARGO_TARGET_DIR:-target}/$HOST/release
else
    echo "== cargo fuzz build (debug, no sanitizer)"
    cargo +nightly fuzz build --dev -s none
    BIN_DIR=${CARGO_TARGET_DIR:-target}/$HOST/debug
fi
for target in $TARGETS; do
    echo "== fuzz $target (${SECONDS_EACH}s)"
    mkdir -p "$SCRATCH/$target" "corpus/$target" "artifacts/$target"
    "$BIN_DIR/$target" "$SCRATCH/$target" "corpus/$target" \
        -artifact_prefix="artifacts/$target/" -max_total_time="$SECONDS_EACH" \
        -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
