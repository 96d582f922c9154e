#!/usr/bin/env bash
# Times the HTTP scrapes (/metrics, /health, /status) of a running daemon against a database
# seeded with finished history. Prints one line per endpoint: median and p95 in milliseconds.
#
#   docs/bench/scrape.sh BINARY DATABASE_URL ACTIONS LEDGER_ROWS
#
#   BINARY        the orchestrator release binary to measure
#   DATABASE_URL  an empty database: sqlite:/path/file.db (created), or
#                 postgres://postgres@127.0.0.1:5432/NAME (an empty database you created)
#   ACTIONS       SUCCESS rows to seed in actions (finished 2 hours to 6 days ago, inside the
#                 default 7-day retention, so the hourly prune deletes none)
#   LEDGER_ROWS   tick_ledger rows to seed (IDLE, every 10th SUCCESS, every 1000th FAIL; all
#                 started 2 hours to 6 days ago)
#
# Environment: N requests per endpoint (200), PORT (9470), RULES (a rules directory for the
# daemon; default none), TOKEN (the admin token; /status needs it on builds that guard it).
#
# Steps: `run-once` migrates the database; one INSERT seeds the actions (plus 100 PENDING rows
# scheduled for 2100, so the daemon's ticks stay idle) and one the ledger; on PostgreSQL
# `VACUUM ANALYZE` (what autovacuum would do after the insert; SQLite is left as the daemon leaves
# it, without statistics); then `run --listen 127.0.0.1:PORT` (its ticks run meanwhile, every 5 s
# by default), 10 warm-up requests per endpoint, then N sequential requests per endpoint on one
# keep-alive connection (one curl process), timed by curl's time_total.
#
# Example, both backends, one binary:
#   docs/bench/scrape.sh target/release/orchestrator sqlite:/tmp/s1.db 1000000 200000
#   psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE scrape1'
#   docs/bench/scrape.sh target/release/orchestrator postgres://postgres@127.0.0.1:5432/scrape1 1000000 200000
set -euo pipefail

[ $# -eq 4 ] || { sed -n '2,16p' "$0"; exit 2; }
bin=$(realpath "$1") url=$2 actions=$3 ledger=$4
n=${N:-200} port=${PORT:-9470} token=${TOKEN:-scrape-bench-token-0123456789}

work=$(mktemp -d)
daemon=
cleanup() {
    if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
# The daemon reads rules/ and writes artifacts/ relative to its working directory.
if [ -n "${RULES:-}" ]; then ln -s "$(realpath "$RULES")" "$work/rules"; else mkdir "$work/rules"; fi
cd "$work"

case $url in
    sqlite:*)
        file=${url#sqlite:}; file=${file#//}; file=${file%%\?*}
        sql() { sqlite3 "$file"; }
        ago() { echo "strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', '-' || ($1) || ' seconds')"; }
        series() { echo "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $1) SELECT i FROM s)"; }
        now="strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')"
        ;;
    postgres:*|postgresql:*)
        sql() { psql -q -v ON_ERROR_STOP=1 "$url"; }
        ago() { echo "now() - ($1) * interval '1 second'"; }
        series() { echo "(SELECT i FROM generate_series(1::bigint, $1) AS i)"; }
        now="now()"
        ;;
    *) echo "DATABASE_URL must be sqlite:… or postgres://…" >&2; exit 2 ;;
esac

"$bin" --database-url "$url" run-once >/dev/null 2>"$work/run-once.log" || { cat "$work/run-once.log" >&2; exit 1; }

# Finished rows spread evenly from 6 days to 2 hours ago, ids in time order (the ledger too).
span=$(( 6 * 86400 - 7200 ))
sql <<SQL
INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts,
                     max_attempts, created_at, updated_at, finished_at)
SELECT 'hist-' || i, 'NOOP', '{}', 'SUCCESS', 0, $(ago "7200 + ($actions - i) * $span / $actions"), 1, 3,
       $(ago "7200 + ($actions - i) * $span / $actions"), $(ago "7200 + ($actions - i) * $span / $actions"), $(ago "7200 + ($actions - i) * $span / $actions")
FROM $(series "$actions") AS t;
INSERT INTO actions (idempotency_key, action_type, payload_json, status, priority, not_before, attempts,
                     max_attempts, created_at, updated_at)
SELECT 'open-' || i, 'NOOP', '{}', 'PENDING', 0, '2100-01-01T00:00:00+00:00', 0, 3, $now, $now
FROM $(series 100) AS t;
INSERT INTO tick_ledger (started_at, finished_at, status, owner, epoch, actions_attempted, actions_succeeded)
SELECT $(ago "7200 + ($ledger - i) * $span / $ledger"), $(ago "7200 + ($ledger - i) * $span / $ledger"),
       CASE WHEN i % 1000 = 500 THEN 'FAIL' WHEN i % 10 = 5 THEN 'SUCCESS' ELSE 'IDLE' END,
       'seed', 1, CASE WHEN i % 10 = 5 THEN 5 ELSE 0 END, CASE WHEN i % 10 = 5 THEN 5 ELSE 0 END
FROM $(series "$ledger") AS t;
SQL
case $url in postgres*) sql <<<"VACUUM ANALYZE;" ;; esac

ORCHESTRATOR_ADMIN_TOKEN=$token RUST_LOG=warn "$bin" --database-url "$url" run --listen "127.0.0.1:$port" \
    >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/health/live" && break
    kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log" >&2; exit 1; }
    sleep 0.1
done

# N requests on one connection; prints "http_code seconds" per request.
times() {
    local urls=() i
    for ((i = 0; i < $2; i++)); do urls+=(-o /dev/null "http://127.0.0.1:$port$1"); done
    curl -s -H "Authorization: Bearer $token" -w '%{http_code} %{time_total}\n' "${urls[@]}"
}
for ep in /metrics /health /status; do
    times "$ep" 10 >/dev/null
    times "$ep" "$n" | awk -v ep="$ep" -v rows="$actions" '
        $1 != 200 { bad++ } { t[NR] = $2 * 1000 }
        END {
            n = asort(t)
            med = n % 2 ? t[(n + 1) / 2] : (t[n / 2] + t[n / 2 + 1]) / 2
            p95 = t[int(n * 0.95 + 0.999999)]
            printf "%-9s rows=%-8s n=%d median_ms=%.3f p95_ms=%.3f non200=%d\n", ep, rows, n, med, p95, bad
        }'
done
