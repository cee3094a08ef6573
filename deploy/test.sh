#!/usr/bin/env bash
# Runs every check and test Tally has, on a fresh machine: formatting, lints, then the unit,
# integration and end-to-end tests against the real binary.
#
# The embedded default needs nothing installed beyond a Rust toolchain; the script checks for
# one and installs the rustfmt and clippy components when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust from https://rustup.rs first" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo build (the tally binary the end-to-end tests run)"
cargo build --workspace --bins --locked

echo "==> cargo test"
cargo test --workspace --locked --no-fail-fast
