#!/usr/bin/env bash
# The curate tour on the sample file shipped in samples/: import every record shape inference.net
# produces, then look at the store with SQL. No API key, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo-out
rm -rf "$out" && mkdir -p "$out"
export CURATE_DB="$out/demo.duckdb"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step curate import samples/generations.jsonl
step curate import samples/generations.jsonl --json
step curate sql "select shape, state, count(*) as n from generations group by all order by n desc"
step curate sql "select model, count(*) as n, sum(prompt_tokens) as prompt, sum(completion_tokens) as completion from generations group by all order by n desc"
step curate sql "select line, reason from rejects"
step curate sql "select id, custom_id, request ->> '\$.messages[-1].content' as last_prompt, response ->> '\$.choices[0].finish_reason' as finish from generations where shape = 'generation' limit 3" --format json
printf '\nThe store is %s: open it in a notebook with\n  import curate; store = curate.open("%s")\n' "$CURATE_DB" "$CURATE_DB"
