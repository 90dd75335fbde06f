#!/usr/bin/env bash
# The curate tour, on loopback only: no API key, no network. It starts the sandbox (a local fake
# of inference.net) and curate's webhook listener, submits requests in groups and singly and
# harvests them, submits more that come back by webhook with no polling, imports the sample file
# of every record shape, prints the store's overview and views, exports two datasets, samples a
# teacher and judges the answers, exports the best as SFT data and pairs as DPO data, and loads
# the four datasets back. README's quickstart lists the same `step` lines (a test holds them together).
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo-out
rm -rf "$out" && mkdir -p "$out"
export CURATE_DB="$out/demo.duckdb"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# The webhook listener, on a free port: it stores what the sandbox pushes to it.
export CURATE_WEBHOOK_IDS=demo-webhook-id
curate listen --port 0 > "$out/listen.log" 2> "$out/listen-access.log" &
listener=$!
trap 'kill $listener 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "ready" "$out/listen.log" 2>/dev/null && break; sleep 0.1; done
webhook_url=$(grep -o 'url=[^ ]*' "$out/listen.log" | cut -d= -f2)
echo "listener: $webhook_url"

# The sandbox, on a free port; the harvest below polls it like the real API, and it delivers
# webhooks to the listener for requests that carry a webhook id.
curate sandbox --port 0 --queue-delay 0.3 --run-delay 0.7 --failure-rate 0.05 --webhook-url "$webhook_url" \
    > "$out/sandbox.log" 2>&1 &
sandbox=$!
trap 'kill $sandbox $listener 2>/dev/null || true' EXIT
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
with open("demo-out/pushed.jsonl", "w") as out:
    for seed in range(2000, 2100):
        out.write(json.dumps(chat_request(seed), ensure_ascii=False) + "\n")
PY

step curate submit demo-out/requests.jsonl
step curate submit demo-out/requests.jsonl
step curate submit demo-out/singles.jsonl --group-size 1
step curate harvest
# These come back by webhook: the listener stores them and strikes them off the ledger.
step curate submit demo-out/pushed.jsonl --webhook-id demo-webhook-id
python - "${webhook_url%/webhook}/healthz" <<'PY'
import json, sys, time, urllib.request
for _ in range(300):  # until the ledger waits for nothing
    health = json.load(urllib.request.urlopen(sys.argv[1]))
    if health["ledger_pending"] == 0:
        break
    time.sleep(0.1)
print("listener:", json.dumps(health["counters"]))
PY
step curate harvest
step curate import samples/generations.jsonl
step curate stats
step curate views
step curate sql "select model, generations, success_rate, latency_p50_s from usage order by generations desc limit 4"
step curate sql "select line, reason from rejects"
step curate snapshot demo-out/snapshot --view chat --view conversations
# Datasets: the conversations as Hugging Face messages, and the stop-finished chats as OpenAI JSONL.
step curate export conversations --out demo-out/dataset-messages --test-size 0.2
step curate export chat --format openai --out demo-out/dataset-openai --where "finish_reason = 'stop'" --test-size 0.2
# Distillation and preference data: a teacher answers the finished chats' prompts 3 times, a judge
# scores every answer, heuristics flag refusals and truncation; then the best answers as SFT data
# and best-against-worst pairs as DPO data.
step curate sample chat --model teacher/big-thinking --n 3 --temperature 0.8 --where "finish_reason = 'stop'"
step curate harvest
step curate judge chat --rubric helpfulness --model judge/strict --where "finish_reason = 'stop'"
step curate harvest
step curate score
step curate sql "select model, count(judge_helpfulness) as judged, round(avg(judge_helpfulness), 1) as helpfulness from scored group by all order by helpfulness desc nulls last"
step curate export scored --out demo-out/dataset-best --where "judge_helpfulness >= 7 and not refusal and not truncated" --test-size 0.2
step curate export scored --format dpo --out demo-out/dataset-dpo --min-margin 2 --test-size 0.2
# Past one machine: the store's generations pushed to an Iceberg lake (a folder here), read back with the same views.
step curate lake push --lake demo-out/lake
step curate sql --lake demo-out/lake "select model, count(*) as chats from chat group by all order by chats desc"
python - "$out" <<'PY'
import sys
import datasets
datasets.disable_progress_bars()
for name in ("dataset-messages", "dataset-openai", "dataset-best", "dataset-dpo"):
    loaded = datasets.load_dataset(f"{sys.argv[1]}/{name}", cache_dir=f"{sys.argv[1]}/hf-cache")
    print(name, {split: len(rows) for split, rows in loaded.items()}, "->", list(loaded["train"].features))
PY
printf '\nThe store is %s: explore it in notebooks/explore.ipynb (CURATE_DB=%s jupyter lab notebooks/),\nor in any notebook with: import curate; db = curate.open("%s"); db.table("chat").df()\n' "$CURATE_DB" "$CURATE_DB" "$CURATE_DB"
printf 'The datasets are in %s/dataset-messages and %s/dataset-openai (README.md is each card);\npublish one with: curate publish %s/dataset-messages --repo ORG/NAME\n' "$out" "$out" "$out"
