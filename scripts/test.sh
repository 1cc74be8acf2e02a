#!/usr/bin/env bash
# Runs every test on a fresh local stack. Usage: npm test [-- deno test filters…]
source "$(dirname "${BASH_SOURCE[0]}")/ensure.sh"
exec deno run -A --no-prompt tests/stack/cli.ts test "$@"
