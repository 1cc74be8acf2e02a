#!/usr/bin/env bash
# Runs the benchmarks on a fresh local stack and writes bench/RESULTS.md.
# Usage: npm run bench [-- --soak 600] [-- --only gateway|db] (options in bench/run.ts)
source "$(dirname "${BASH_SOURCE[0]}")/ensure.sh"
exec deno run -A --no-prompt bench/run.ts "$@"
