#!/usr/bin/env bash
# Runs the gateway locally: database, the ai function, the demo page. Usage: npm run dev
source "$(dirname "${BASH_SOURCE[0]}")/ensure.sh"
exec deno run -A --no-prompt tests/stack/cli.ts dev "$@"
