#!/usr/bin/env bash
# Runs every check and test Tally has, on a fresh machine: formatting, lints, then the unit,
# integration and end-to-end tests against the real binary, real SQLite, a real Kafka broker
# and a real MariaDB.
#
# It provisions what the tests need: deploy/infra.sh installs and starts Kafka and MariaDB on
# 127.0.0.1 (a second run finds them up), and Python's aiosmtpd is installed for the SMTP
# tests. Only a Rust toolchain, Java 17 with Maven, and Python 3 with pip must be present.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo java mvn python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$tool is missing: see README.md for what a machine needs" >&2
        exit 1
    fi
done
if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

echo "==> provisioning Kafka and MariaDB on 127.0.0.1"
./deploy/infra.sh up
eval "$(./deploy/infra.sh env)"

echo "==> installing the SMTP test server"
python3 -m pip install --quiet --disable-pip-version-check aiosmtpd==1.4.6

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo build (the tally binary the end-to-end tests run)"
cargo build --workspace --bins --locked

echo "==> cargo test"
status=0
cargo test --workspace --locked --no-fail-fast || status=$?

# After the rest, one at a time: the broker restart stops the broker every Kafka test shares.
echo "==> fault suites (roles killed under load)"
cargo test -p tally-tests --features fault-suites --locked --test faults || status=$?
echo "==> fault suite (the broker restarted under load)"
cargo test -p tally-tests --features fault-suites --locked --test broker_restart || status=$?
echo "==> replay of 100,000 transactions compared with the live read tables"
cargo test -p tally-tests --features fault-suites --locked --test replay_at_scale -- \
    --nocapture --test-threads 1 || status=$?
exit "$status"
