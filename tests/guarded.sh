#!/usr/bin/env bash
# Run a command inside a pids cgroup (pids.max numeric) so that a sandbox escape
# in the hostile-code tests cannot fork-bomb the machine. The attack tests that
# need this guard skip themselves without it. Falls back to running unguarded
# (with a warning) where the cgroup-v1 pids hierarchy is not writable.
set -euo pipefail
root=/sys/fs/cgroup/pids
if [ -w "$root" ]; then
    group="$root/grpo-tests-$$"
    mkdir -p "$group"
    echo "${GRPO_TEST_PIDS_MAX:-8192}" > "$group/pids.max"
    echo $$ > "$group/cgroup.procs"
    trap 'echo $$ > "$root/cgroup.procs"; rmdir "$group" 2>/dev/null || true' EXIT
else
    echo "warning: $root not writable: running without the pids guard (guarded attack tests will skip)" >&2
fi
"$@"
