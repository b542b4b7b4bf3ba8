#!/usr/bin/env bash
# The integration tests, the page server's tests and the probe under other
# Linux kernels, booted under QEMU by the kernel harness
# (../shared/kernels/run-in-kernel.sh).
#
#   ci/kernel-matrix.sh                 every kernel below, two at a time
#   ci/kernel-matrix.sh 6.1 7.3-oot     just these
#   ci/kernel-matrix.sh 6.1 -- FILTER   one kernel, only tests matching FILTER
#
# Each kernel gets one boot: the probe's table, then the integration test
# binary and the page server's test binary (pager/tests/pager.rs, with the
# userfault-pager binary it drives), both with the USERFAULT_TEST_REQUIRE
# list of what that kernel has (a test that would skip for want of a listed
# capability fails); a FILTER goes to both. The exit status is non-zero
# when any kernel's run fails. Knobs: KERNELS_DIR (the harness; default
# ../shared/kernels beside the clone), MATRIX_JOBS (kernels at a time,
# default 2), MATRIX_OUT (logs and summaries, default target/kernel-matrix).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
KERNELS_DIR=${KERNELS_DIR:-$ROOT/../shared/kernels}
JOBS=${MATRIX_JOBS:-2}
OUT=${MATRIX_OUT:-$ROOT/target/kernel-matrix}
TARGET=x86_64-unknown-linux-gnu

# What each kernel offers, as test capability names (tests/util.rs). Not in
# any list: c-headers (the guest has no C compiler), headers-7.3, and
# kvm-memory-attributes (the default VM type answers 0 on every kernel here).
base="uffd,kvm,hugetlb,root"
req_5_10="$base"
req_6_1="$base,uffd-dev,uffd-user-mode-only,uffd-minor-shmem,uffd-minor-hugetlb,uffd-wp-shmem"
req_6_12="$req_6_1,uffd-wp-async,uffd-continue-wp,uffd-poison,uffd-move,pagemap-scan,kvm-memslot2,gmem"
req_7_3="$req_6_12,gmem-slot,gmem-mmap,uffd-rwp,uffd-rwp-async"
req_7_3_oot="$req_7_3,gmem-uffd,gmem-uffd-copy,gmem-continue-only,gmem-write,kvm-userfault"
require_of() {
	case $1 in
	5.10) echo "$req_5_10" ;;
	6.1) echo "$req_6_1" ;;
	6.12) echo "$req_6_12" ;;
	7.3) echo "$req_7_3" ;;
	7.3-oot) echo "$req_7_3_oot" ;;
	*) echo "unknown kernel '$1' (known: 5.10 6.1 6.12 7.3 7.3-oot)" >&2; return 1 ;;
	esac
}

kernels=()
filter=()
while [ $# -gt 0 ]; do
	case $1 in
	--) shift; filter=("$@"); break ;;
	*) kernels+=("$1"); shift ;;
	esac
done
[ ${#kernels[@]} -gt 0 ] || kernels=(5.10 6.1 6.12 7.3 7.3-oot)
for k in "${kernels[@]}"; do require_of "$k" >/dev/null; done
[ -x "$KERNELS_DIR/run-in-kernel.sh" ] || { echo "no kernel harness at $KERNELS_DIR" >&2; exit 2; }

echo "== build: static test binaries, the pager and the probe ($TARGET)"
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
mkdir -p "$OUT"
if ! cargo test --target $TARGET --test integration --no-run --message-format=json \
	>"$OUT/build.json" 2>"$OUT/build.err"; then
	cat "$OUT/build.err" >&2
	exit 2
fi
test_bin=$(sed -n 's/.*"executable":"\([^"]*integration[^"]*\)".*/\1/p' "$OUT/build.json" | tail -n1)
if ! cargo test --target $TARGET -p userfault-pager --test pager --no-run --message-format=json \
	>"$OUT/build-pager.json" 2>"$OUT/build.err"; then
	cat "$OUT/build.err" >&2
	exit 2
fi
pager_test_bin=$(sed -n 's/.*"executable":"\([^"]*\/pager-[^"]*\)".*/\1/p' "$OUT/build-pager.json" | tail -n1)
cargo build --target $TARGET --bin userfault-probe
cargo build --target $TARGET -p userfault-pager --bin userfault-pager
probe_bin=$ROOT/target/$TARGET/debug/userfault-probe
pager_bin=$ROOT/target/$TARGET/debug/userfault-pager
for b in "$test_bin" "$pager_test_bin" "$probe_bin" "$pager_bin"; do
	[ -n "$b" ] && [ -x "$b" ] || { echo "build failed: no binary '$b'" >&2; exit 2; }
done
cp "$test_bin" "$OUT/integration"
cp "$pager_test_bin" "$OUT/pager-tests"
cp "$probe_bin" "$OUT/userfault-probe"
cp "$pager_bin" "$OUT/userfault-pager"

# The guest's program: the probe's table, then the tests. busybox sh runs it.
cat >"$OUT/matrix-run" <<'EOF'
#!/bin/sh
echo "== userfault-probe (kernel $(uname -r))"
./userfault-probe
probe=$?
echo "== userfault-probe exit status $probe"
./integration --test-threads=1 "$@"
tests=$?
echo "== pager tests"
./pager-tests --test-threads=1 "$@"
pager=$?
[ "$tests" = 0 ] || exit "$tests"
[ "$pager" = 0 ] || exit "$pager"
exit "$probe"
EOF
chmod +x "$OUT/matrix-run"

run_one() { # $1: kernel
	local k=$1 log=$OUT/$1.log start rc
	start=$(date +%s)
	rc=0
	KRUN_QUIET=0 KRUN_TIMEOUT=${MATRIX_TIMEOUT:-1500} KRUN_HUGEPAGES=16 \
		KRUN_FILES="$OUT/integration $OUT/pager-tests $OUT/userfault-probe $OUT/userfault-pager" \
		KRUN_ENV="USERFAULT_TEST_REQUIRE=$(require_of "$k") USERFAULT_PROBE=/payload/userfault-probe USERFAULT_PAGER_BIN=/payload/userfault-pager" \
		"$KERNELS_DIR/run-in-kernel.sh" "$k" "$OUT/matrix-run" "${filter[@]}" >"$log" 2>&1 || rc=$?
	echo "$rc $(($(date +%s) - start))" >"$OUT/$k.status"
}

echo "== run: ${kernels[*]} ($JOBS at a time; logs in $OUT)"
t0=$(date +%s)
running=0
for k in "${kernels[@]}"; do
	run_one "$k" &
	running=$((running + 1))
	if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
done
wait || true

failed=0
printf '\n%-8s %-6s %6s %6s %6s %6s  %s\n' kernel status passed failed skips secs "require"
for k in "${kernels[@]}"; do
	read -r rc secs <"$OUT/$k.status" || { rc=125 secs=0; }
	log=$OUT/$k.log
	# Summed over both test binaries.
	passed=$(sed -n 's/^test result: .* \([0-9]*\) passed.*/\1/p' "$log" | awk '{s += $1} END {if (NR) print s}')
	nfail=$(sed -n 's/^test result: .* \([0-9]*\) failed.*/\1/p' "$log" | awk '{s += $1} END {if (NR) print s}')
	skips=$(grep -c 'SKIP [a-z_0-9]*\( \[[A-Za-z]*\]\)\?:' "$log" || true)
	status=ok
	[ "$rc" = 0 ] || { status="rc=$rc"; failed=1; }
	printf '%-8s %-6s %6s %6s %6s %6s  %s\n' "$k" "$status" "${passed:-?}" "${nfail:-?}" "$skips" "$secs" "$(require_of "$k")"
done
echo "matrix wall time: $(($(date +%s) - t0)) s"
for k in "${kernels[@]}"; do
	read -r rc _ <"$OUT/$k.status" || rc=125
	if [ "$rc" != 0 ]; then
		echo
		echo "== $k: failures (full log: $OUT/$k.log)"
		sed -n '/^failures:$/,/^test result/p' "$OUT/$k.log" | head -n 400
		grep -E '^\[run-in-kernel\]' "$OUT/$k.log" || true
	fi
done
exit $failed
