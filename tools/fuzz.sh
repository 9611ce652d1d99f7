#!/usr/bin/env bash
# Run every cargo-fuzz target for FUZZ_SECONDS (default 600) each, FUZZ_PARALLEL (default 2) at a
# time, each on its own corpus (fuzz/corpus/<target>, grown by the run, not committed) seeded
# from fuzz/seeds/<target> (committed). A crash leaves its input in fuzz/artifacts/<target>/ and
# fails the run; copied into fuzz/seeds/<target>/, it is a regression test (the host's unit test
# `fuzzing::tests::every_seed_runs_clean` replays every seed). Prints executions and crashes per
# target. Needs the nightly toolchain (sanitizers).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-600}"
parallel="${FUZZ_PARALLEL:-2}"
targets=(${FUZZ_TARGETS:-jwt signed_claims request_body stream_frames endpoint_egress prompt_files})
toolchain="${FUZZ_TOOLCHAIN:-+nightly}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
cargo $toolchain fuzz build -O
mkdir -p logs
run() {
    local target="$1"
    mkdir -p "corpus/$target" "artifacts/$target"
    cargo $toolchain fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" >"logs/$target.log" 2>&1
}
pids=()
status=0
for target in "${targets[@]}"; do
    run "$target" &
    pids+=("$!")
    if [ "${#pids[@]}" -ge "$parallel" ]; then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
printf '%-18s %12s %10s %8s %s\n' target executions exec/s crashes corpus
for target in "${targets[@]}"; do
    log="logs/$target.log"
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    crashes=$(find "artifacts/$target" -type f | wc -l)
    corpus=$(find "corpus/$target" -type f | wc -l)
    printf '%-18s %12s %10s %8s %s\n' "$target" "$runs" "$rate" "$crashes" "$corpus"
done
exit "$status"
