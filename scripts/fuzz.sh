#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets under fuzz/ for a while each and
# reports, per target, the executions run and whether a crash was found.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; the targets default to every file in
# fuzz/fuzz_targets/. Installs cargo-fuzz when it is missing. On a stable
# toolchain the -Z flags cargo-fuzz needs are allowed with RUSTC_BOOTSTRAP=1.
#
# Each target starts from its tracked seeds (fuzz/seeds/<target>/), copied
# into its working corpus fuzz/corpus/<target>/ (git-ignored, kept between
# runs so the corpus keeps growing). Crash inputs land in
# fuzz/artifacts/<target>/, libFuzzer's output in fuzz/logs/<target>.log
# (both git-ignored). The JSON targets use the dictionaries in fuzz/dicts/.
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none (faster, no ASan)
#   FUZZ_ARGS       extra libFuzzer flags, e.g. "-max_len=65536"
#
# Exits 1 when any target crashed, 2 on a usage or build error.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$root/fuzz"
cd "$root"

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
shift || true

all_targets=()
for file in "$fuzz"/fuzz_targets/*.rs; do
    all_targets+=("$(basename "$file" .rs)")
done
if [ "$#" -gt 0 ]; then
    targets=("$@")
    for target in "${targets[@]}"; do
        if [ ! -f "$fuzz/fuzz_targets/$target.rs" ]; then
            echo "unknown target $target (known: ${all_targets[*]})" >&2
            exit 2
        fi
    done
else
    targets=("${all_targets[@]}")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes -Z flags (the sanitizer, -Zunstable-options): a stable
# toolchain takes them with RUSTC_BOOTSTRAP=1.
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

sanitizer="${FUZZ_SANITIZER:-address}"
read -r -a extra_args <<<"${FUZZ_ARGS:-}"

echo "== building ${targets[*]} (sanitizer: $sanitizer)"
for target in "${targets[@]}"; do
    if ! cargo fuzz build --fuzz-dir "$fuzz" --sanitizer "$sanitizer" "$target"; then
        echo "build of $target failed" >&2
        exit 2
    fi
done

mkdir -p "$fuzz/logs"
summary=()
crashed=0
for target in "${targets[@]}"; do
    corpus="$fuzz/corpus/$target"
    artifacts="$fuzz/artifacts/$target"
    log="$fuzz/logs/$target.log"
    mkdir -p "$corpus" "$artifacts"
    if [ -d "$fuzz/seeds/$target" ]; then
        cp -p "$fuzz/seeds/$target"/* "$corpus"/ 2>/dev/null || true
    fi
    # The JSON targets get a dictionary of their field names and values.
    dict=()
    case "$target" in
        frame_decode | handshake_server | handshake_client) dict=(-dict="$fuzz/dicts/shardq.dict") ;;
        legacy_decode | legacy_handshake) dict=(-dict="$fuzz/dicts/legacy.dict") ;;
    esac
    echo "== fuzzing $target for ${seconds}s (corpus: $(find "$corpus" -type f | wc -l) inputs)"
    status=0
    cargo fuzz run --fuzz-dir "$fuzz" --sanitizer "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=30 \
        "${dict[@]}" "${extra_args[@]}" >"$log" 2>&1 || status=$?

    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)"
    last="$(grep -E '^#[0-9]+.* cov: ' "$log" | tail -n1 || true)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
    corp="$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")"
    line="$target: ${runs:-?} executions, ${rate:-?} exec/s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
    if [ "$status" -eq 0 ]; then
        line="$line, no crash"
    else
        crashed=1
        input="$(grep -oE '(Test unit written to|Failing input:) *[^ ]+' "$log" | tail -n1 | awk '{print $NF}' || true)"
        line="$line, CRASH (exit $status) input: ${input:-see $log}"
        echo "-- $target crashed:"
        grep -m1 -A1 "panicked at" "$log" || true
        grep -m1 -A2 -E "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)" "$log" || true
        if [ -n "$input" ] && [ -f "$input" ]; then
            echo "-- input (hex, first 256 bytes):"
            head -c 256 "$input" | od -An -tx1 | head -n 16
            echo "-- reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $target $input"
        fi
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary (${seconds}s per target, logs in fuzz/logs/)"
printf '%s\n' "${summary[@]}"
exit "$crashed"
