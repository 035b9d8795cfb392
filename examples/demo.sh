#!/usr/bin/env bash
# make demo: local stand-ins (moto server as Firehose -> a local Moesif-like receiver),
# backfill the bundled sample through boto3, run it again to show nothing new is delivered;
# both runs keep the ID ledger (--ledger), queried with DuckDB; then Firehose's failed deliveries
# (written to the stand-in S3 bucket in Firehose's layout) are re-sent with `redrive`; last, the
# same sample goes straight to the Moesif Collector API stand-in (--sink moesif).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CLI=.venv/bin/moesif-backfill
DEMO=.demo
STATE="$DEMO/standins.json"
mkdir -p "$DEMO"
export PREFECT_HOME="$PWD/$DEMO/prefect"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_LOGGING_LEVEL=WARNING
# Dummy credentials for the local stand-ins only: nothing here talks to AWS.
export AWS_ACCESS_KEY_ID=demo-key-id AWS_SECRET_ACCESS_KEY=demo-secret AWS_DEFAULT_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN || true
# The Collector stand-in's application id (--sink moesif); a real one is a secret: never a flag.
export MOESIF_APPLICATION_ID=local-demo-application-id

"$PY" -m tests.standins down --state-file "$STATE" >/dev/null 2>&1 || true
rm -rf "$DEMO/checkpoints" "$DEMO/ledger" "$DEMO"/summary-*.json "$DEMO/preview" "$DEMO/redrive-preview"
"$PY" -m tests.standins up --state-file "$STATE" >"$DEMO/standins.log" 2>&1 &
trap '"$PY" -m tests.standins down --state-file "$STATE" >/dev/null 2>&1 || true' EXIT
"$PY" -m tests.standins wait --state-file "$STATE" --timeout 60 >/dev/null
ENDPOINT=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['endpoint_url'])" "$STATE")
STREAM=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['stream'])" "$STATE")
COLLECTOR=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['collector_url'])" "$STATE")
BUCKET=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['bucket'])" "$STATE")
"$PY" examples/make_sample.py --out "$DEMO/payments.csv"
echo "== preflight (sends nothing)"
"$CLI" validate "$DEMO/payments.csv" --mapping examples/mapping.yaml
for n in 1 2; do
  echo "== run $n: backfill $DEMO/payments.csv -> Firehose stream $STREAM at $ENDPOINT"
  "$CLI" run "$DEMO/payments.csv" --mapping examples/mapping.yaml --stream "$STREAM" \
    --endpoint-url "$ENDPOINT" --region us-east-1 --checkpoint "$DEMO/checkpoints" \
    --job demo-payments --summary-json "$DEMO/summary-$n.json" --ledger "$DEMO/ledger" --quiet
done
echo "== receiver (what Moesif would have received)"
"$PY" -m tests.standins stats --state-file "$STATE"
"$PY" - "$DEMO" <<'PYEOF'
import json, sys
d = sys.argv[1]
one, two = (json.load(open(f"{d}/summary-{n}.json")) for n in (1, 2))
print(f"run 1: sent {one['actions_sent']}, skipped {one['rows_skipped']}")
print(f"run 2: sent {two['actions_sent']}, skipped {two['rows_skipped']} (already delivered)")
assert one["actions_sent"] == one["rows_read"] and two["actions_sent"] == 0, "demo check failed"
print("demo OK")
PYEOF
echo "== the ID ledger: one row per input row (README \"Reconciling\"), read by DuckDB"
"$PY" - "$DEMO" <<'PYEOF'
import json, sys
import duckdb  # a dev dependency: `make demo` installs it
d = sys.argv[1]
query = (
    f"SELECT job, status, count(*) AS rows, count(DISTINCT run_id) AS runs "
    f"FROM read_parquet('{d}/ledger/**/*.parquet', hive_partitioning=true) "
    "GROUP BY ALL ORDER BY ALL"
)
print(query)
duckdb.sql(query).show()
rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{d}/ledger/**/*.parquet')").fetchall()[0][0]
one = json.load(open(f"{d}/summary-1.json"))
assert rows == one["rows_read"], (rows, one["rows_read"])
print(f"ledger: {rows} rows = rows read; run 2 skipped every chunk, so it wrote none")
PYEOF
echo "== redrive: Firehose's failed deliveries (README \"Redriving Firehose's failed deliveries\")"
# What Firehose would have written after Moesif refused deliveries for its whole retry duration:
# 300 of the actions run 1 sent, in Firehose's failed-delivery layout, one object gzip'd.
"$CLI" run "$DEMO/payments.csv" --mapping examples/mapping.yaml --dry-run --out "$DEMO/preview" --quiet >/dev/null
"$PY" examples/make_failed_deliveries.py --dry-run-dir "$DEMO/preview" --bucket "$BUCKET" \
  --prefix failed/errors/ --stream "$STREAM" --s3-endpoint-url "$ENDPOINT" --actions 300
REDRIVE=(redrive "s3://$BUCKET/failed/errors/" --s3-endpoint-url "$ENDPOINT" --region us-east-1)
echo "-- preview: counts by errorCode and arrival day, nothing sent"
"$CLI" "${REDRIVE[@]}" --dry-run --out "$DEMO/redrive-preview" --quiet
for n in 1 2; do
  echo "-- redrive $n"
  "$CLI" "${REDRIVE[@]}" --stream "$STREAM" --endpoint-url "$ENDPOINT" \
    --checkpoint "$DEMO/checkpoints" --summary-json "$DEMO/summary-redrive-$n.json" --delete-after \
    --ledger "$DEMO/ledger" --quiet
done
"$PY" - "$DEMO" <<'PYEOF'
import json, sys
d = sys.argv[1]
one, two = (json.load(open(f"{d}/summary-redrive-{n}.json")) for n in (1, 2))
print(f"redrive 1: sent {one['actions_sent']} actions (their transaction_ids unchanged: Moesif "
      f"deduplicates those it had), deleted {one['objects_deleted']} objects")
print(f"redrive 2: sent {two['actions_sent']}, {two['objects_total']} objects left")
assert one["actions_sent"] == 300 and one["objects_deleted"] == 2, "redrive check failed"
assert two["actions_sent"] == 0 and two["objects_total"] == 0, "redrive rerun check failed"
print("redrive OK")
PYEOF
echo "-- the ledger of run and redrive together (union_by_name: redrive adds line, action, etag)"
"$PY" - "$DEMO" <<'PYEOF'
import sys
import duckdb
d = sys.argv[1]
query = (
    f"SELECT job, status, count(*) AS actions, count(DISTINCT transaction_id) AS ids "
    f"FROM read_parquet('{d}/ledger/**/*.parquet', hive_partitioning=true, union_by_name=true) "
    "GROUP BY ALL ORDER BY ALL"
)
duckdb.sql(query).show()
both = duckdb.sql(
    f"SELECT count(*) FROM read_parquet('{d}/ledger/**/*.parquet', union_by_name=true) r "
    "WHERE r.line IS NOT NULL AND r.transaction_id NOT IN (SELECT transaction_id FROM "
    f"read_parquet('{d}/ledger/**/*.parquet', union_by_name=true) WHERE line IS NULL)"
).fetchall()[0][0]
assert both == 0, f"{both} redriven ids were never sent by run"
print("every redriven transaction_id is one run had sent: Moesif deduplicates them")
PYEOF
echo "== --sink moesif: the same sample straight to the Collector API stand-in at $COLLECTOR"
for n in 1 2; do
  "$CLI" run "$DEMO/payments.csv" --mapping examples/mapping.yaml --sink moesif \
    --moesif-url "$COLLECTOR" --checkpoint "$DEMO/checkpoints" --job demo-payments-direct \
    --summary-json "$DEMO/summary-direct-$n.json" --quiet --no-prefect 2>&1 | grep -E "^job|sent|skipped|moesif calls" || true
done
"$PY" -m tests.standins stats --state-file "$STATE" --collector
"$PY" - "$DEMO" <<'PYEOF'
import json, sys
d = sys.argv[1]
one, two = (json.load(open(f"{d}/summary-direct-{n}.json")) for n in (1, 2))
assert one["sink"] == "moesif" and one["actions_sent"] == one["rows_read"] == 2000, one
assert two["actions_sent"] == 0 and two["rows_skipped"] == 2000, two
print(f"--sink moesif: sent {one['actions_sent']} in {one['calls']} Collector calls; "
      f"rerun skipped {two['rows_skipped']}")
print("collector OK")
PYEOF
