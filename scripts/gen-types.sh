#!/usr/bin/env bash
# Regenerates supabase/functions/_shared/database.types.ts from the migrations. Usage: npm run gen-types
source "$(dirname "${BASH_SOURCE[0]}")/ensure.sh"
exec deno run -A --no-prompt tests/stack/types.ts
