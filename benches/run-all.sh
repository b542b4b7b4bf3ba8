#!/usr/bin/env bash
# Reproduces every number in BENCHMARKS.md: all scenarios of benches/faults
# (safe layer against the raw baseline, interleaved, plus handler
# instructions per fault under callgrind), then the userfaultfd crate
# against the same baseline (bench-peer).
#
# Needs root (huge page reservation, /dev/userfaultfd), /dev/kvm, valgrind,
# and libclang for bench-peer (the userfaultfd crate runs bindgen when it
# builds). Arguments are passed to both binaries: --smoke, --rounds N, or
# scenario names (anon, anon-mt, shmem, chunk, huge, kvm, cost).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench faults -- "$@"
cargo run --locked --release --manifest-path bench-peer/Cargo.toml -- "$@"
