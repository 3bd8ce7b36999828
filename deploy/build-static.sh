#!/bin/sh
# Builds rollback-watchdog as one statically linked executable (glibc's
# static libc, no shared library needed at run time) and prints its path.
# The Dockerfile's build stage and check-static.sh both run this, so what
# is checked here is what goes into the image. Run from the repository root.
# The image leaves out the simulated cluster (`sim` and `demo` commands,
# the default cargo feature `sim`): a smaller binary, nothing to explore.
set -eu
target="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --no-default-features --target "$target" >&2
echo "${CARGO_TARGET_DIR:-target}/$target/release/rollback-watchdog"
