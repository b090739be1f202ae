#!/usr/bin/env bash
# Run the test tiers one pytest process each: unit, integration, e2e, reliability.
# Why separate processes: a vLLM engine pins its process's threads to cores and leaves
# OpenMP pools behind; later tiers fork children (kill-point tests) and measure their own
# memory, which must not inherit that. Every tier runs even if an earlier one failed.
#   tests/run_tiers.sh PYTHON [extra pytest args...]
set -uo pipefail
py="$1"; shift
failed=()
for tier in unit integration e2e reliability; do
    echo "=== tests/$tier ==="
    start=$(date +%s)
    "$py" -m pytest -q --timeout=1200 -p no:cacheprovider "$@" "tests/$tier" || failed+=("$tier")
    echo "=== tests/$tier: $(( $(date +%s) - start )) s ==="
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED tiers: ${failed[*]}" >&2
    exit 1
fi
echo "all tiers passed"
