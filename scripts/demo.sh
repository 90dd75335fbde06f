#!/usr/bin/env bash
# The curate tour, on loopback only: no API key, no network. It starts the sandbox (a local fake
# of inference.net), submits requests to it in groups and singly, harvests them, imports the
# sample file of every record shape, and looks at the store with SQL.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo-out
rm -rf "$out" && mkdir -p "$out"
export CURATE_DB="$out/demo.duckdb"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# The sandbox, on a free port; the harvest below polls it like the real API.
curate sandbox --port 0 --queue-delay 0.3 --run-delay 0.7 --failure-rate 0.05 > "$out/sandbox.log" 2>&1 &
sandbox=$!
trap 'kill $sandbox 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "ready" "$out/sandbox.log" 2>/dev/null && break; sleep 0.1; done
INFERENCE_BASE_URL=$(grep -o 'url=[^ ]*' "$out/sandbox.log" | cut -d= -f2)
export INFERENCE_BASE_URL INFERENCE_API_KEY=sandbox-key
echo "sandbox: $INFERENCE_BASE_URL"

# 120 chat requests (some offer tools, some are multi-turn), and 10 more to send singly.
python - <<'PY'
import json
from curate.synthetic import chat_request
with open("demo-out/requests.jsonl", "w") as out:
    for seed in range(120):
        out.write(json.dumps(chat_request(seed), ensure_ascii=False) + "\n")
with open("demo-out/singles.jsonl", "w") as out:
    for seed in range(1000, 1010):
        out.write(json.dumps(chat_request(seed), ensure_ascii=False) + "\n")
PY

step curate submit demo-out/requests.jsonl
step curate submit demo-out/requests.jsonl
step curate submit demo-out/singles.jsonl --group-size 1
step curate harvest
step curate import samples/generations.jsonl
step curate sql "select source, shape, state, count(*) as n from generations group by all order by n desc"
step curate sql "select model, count(*) as n, sum(prompt_tokens) as prompt, sum(completion_tokens) as completion from generations group by all order by n desc"
step curate sql "select line, reason from rejects"
step curate sql "select id, custom_id, request ->> '\$.messages[-1].content' as last_prompt, response ->> '\$.choices[0].finish_reason' as finish from generations where source = 'group' limit 3" --format json
printf '\nThe store is %s: open it in a notebook with\n  import curate; store = curate.open("%s")\n' "$CURATE_DB" "$CURATE_DB"
