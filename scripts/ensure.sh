#!/usr/bin/env bash
# Makes sure this machine has what the local stack needs, installing what is missing:
# the pinned Deno and Supabase CLI from npm, and PostgreSQL 15 with pg_cron, pgTAP and
# plpgsql_check from Debian's packages. Sourced by dev.sh, test.sh and bench.sh.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

say() { printf '\033[1mtollgate:\033[0m %s\n' "$*" >&2; }
fail() { printf '\033[1;31mtollgate:\033[0m %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null || fail "Node.js is required (https://nodejs.org); then run this again."
command -v npm >/dev/null || fail "npm is required (it comes with Node.js); then run this again."

if [[ ! -x node_modules/.bin/deno || ! -x node_modules/.bin/supabase ]]; then
  say "installing Deno and the Supabase CLI from npm (pinned in package.json and package-lock.json)…"
  # `npm install` with the lock file, not `npm ci`: npm 11 writes lock files without the other
  # platforms' optional binaries of deno and supabase, and `npm ci` then refuses them.
  npm install --no-save --no-audit --no-fund --loglevel=error >&2 || fail "npm install failed (see above)."
fi

pg_bin=/usr/lib/postgresql/15/bin
pg_lib=/usr/lib/postgresql/15/lib
pg_ext=/usr/share/postgresql/15/extension
missing=()
[[ -x $pg_bin/postgres ]] || missing+=(postgresql-15)
[[ -f $pg_lib/pg_cron.so ]] || missing+=(postgresql-15-cron)
[[ -f $pg_ext/pgtap.control ]] || missing+=(postgresql-15-pgtap)
command -v pg_prove >/dev/null || missing+=(pgtap)
[[ -f $pg_lib/plpgsql_check.so ]] || missing+=(postgresql-15-plpgsql-check)
# The test command also drives the demo page (web/) in a real browser: Debian's chromium.
if [[ $(basename "${BASH_SOURCE[1]:-}") == test.sh && -z ${CHROMIUM_PATH:-} ]]; then
  command -v chromium >/dev/null || missing+=(chromium)
fi

if ((${#missing[@]})); then
  install="apt-get install -y --no-install-recommends ${missing[*]}"
  command -v apt-get >/dev/null ||
    fail "missing packages: ${missing[*]}. This is not a Debian-like system (no apt-get): install PostgreSQL 15 with pg_cron, pgTAP (and pg_prove) and plpgsql_check, or point TOLLGATE_DB_URL at an existing Supabase database; for the tests, also Chromium (or set CHROMIUM_PATH)."
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || fail "missing packages ${missing[*]}; run as root: $install"
    sudo=(sudo)
  fi
  say "installing ${missing[*]} from Debian's packages…"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq >&2 || fail "apt-get update failed; run it by hand, then: $install"
  "${sudo[@]}" $install >&2 || fail "could not install packages; run by hand: $install"
fi

export PATH="$root/node_modules/.bin:$pg_bin:$PATH"
export DENO_NO_UPDATE_CHECK=1
