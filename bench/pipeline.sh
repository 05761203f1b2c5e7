#!/usr/bin/env bash
# pipeline.sh WORKDIR — the full cycle exporter -> pbs -> importer on the pgtext data
# set made by bench.sh (WORKDIR/data/pgtext_v{1,2}/dump.sql), on loopback: bytes on the
# wire of each leg and the time from `exporter run` to "importer verified", for v1 and
# then v2; rsync's bytes for the same v1 -> v2 update measured in the same run.
# Knobs: BIN (folder with exporter, pbs, importer; default: cargo build --release).
set -euo pipefail
NAME=pipeline
. "$(dirname "$0")/pgtext-setup.sh"
P=$W/pipeline
rm -rf "$P"; mkdir -p "$P/src" "$P/hooks"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
PORT=${PORT_BASE:-27800}
T_ADMIN=bench-admin-token-000000 T_N=bench-notify-token-00000 T_PULL=bench-pull-token-0000000 T_PUSH=bench-push-token-0000000 T_CLONE=bench-clone-token-000000

# The export hook writes a new dump file, as pg_dump would.
cat >"$P/hooks/export" <<SH
#!/bin/sh
set -e
cp "$P/src/dump.sql" "\$PULLBACK_BACKUP_DIR/dump.sql.tmp"
mv "\$PULLBACK_BACKUP_DIR/dump.sql.tmp" "\$PULLBACK_BACKUP_DIR/dump.sql"
SH
chmod +x "$P/hooks/export"
cat >"$P/pbs.toml" <<TOML
state_dir = "$P/pbs"
[archive]
path = "$P/pbs/archive"
[server]
listen = "127.0.0.1:$PORT"
tokens = [{ peer = "exporter", token = "$T_N" }, { peer = "clone", token = "$T_CLONE" }, { peer = "admin", token = "$T_ADMIN" }]
[[source]]
name = "pgtext"
exporter = { name = "exporter", url = "http://127.0.0.1:$((PORT + 1))", token = "$T_PULL" }
[[importer]]
name = "clone"
url = "http://127.0.0.1:$((PORT + 2))"
token = "$T_PUSH"
TOML
cat >"$P/exporter.toml" <<TOML
source = "pgtext"
backup_dir = "$P/exporter/backup"
state_dir = "$P/exporter"
schedule = "off"
[hooks]
export = "$P/hooks/export"
[server]
listen = "127.0.0.1:$((PORT + 1))"
tokens = [{ peer = "pbs", token = "$T_PULL" }, { peer = "admin", token = "$T_ADMIN" }]
[[pbs]]
name = "pbs"
url = "http://127.0.0.1:$PORT"
token = "$T_N"
TOML
cat >"$P/importer.toml" <<TOML
name = "clone"
store = "$P/clone/store"
restore_dir = "$P/clone/restore"
state_dir = "$P/clone"
[server]
listen = "127.0.0.1:$((PORT + 2))"
tokens = [{ peer = "pbs", token = "$T_PUSH" }, { peer = "admin", token = "$T_ADMIN" }]
[coordinator]
name = "pbs"
url = "http://127.0.0.1:$PORT"
token = "$T_CLONE"
TOML
export PULLBACK_LOG=warn
"$BIN/pbs" --config "$P/pbs.toml" serve 2>"$P/pbs.log" & PIDS+=($!)
"$BIN/importer" --config "$P/importer.toml" serve 2>"$P/importer.log" & PIDS+=($!)
"$BIN/exporter" --config "$P/exporter.toml" serve 2>"$P/exporter.log" & PIDS+=($!)
for p in $PORT $((PORT + 1)) $((PORT + 2)); do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
metric() {
  curl -fsS -H "Authorization: token $T_ADMIN" "http://127.0.0.1:$1/metrics" |
    awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d", s}'
}
verified() {
  "$BIN/importer" --config "$P/importer.toml" status --json |
    python3 -c 'import json,sys; v=json.load(sys.stdin)["last_valid"] or {}; print(v.get("generation","") if v.get("verified") else "")'
}
ROWS=()
cycle() { # cycle V
  local v=$1 e0 p0 e1 p1 t0 t1 hook
  cp "$D/pgtext_v$v/dump.sql" "$P/src/dump.sql"; cat "$P/src/dump.sql" >/dev/null
  e0=$(metric $((PORT + 1)) pullback_bytes_sent_total); p0=$(metric "$PORT" pullback_bytes_sent_total)
  t0=$(date +%s.%N)
  "$BIN/exporter" --config "$P/exporter.toml" run >/dev/null
  until [[ $(verified) == "pgtext/$v" ]]; do sleep 0.05; done
  t1=$(date +%s.%N)
  e1=$(metric $((PORT + 1)) pullback_bytes_sent_total); p1=$(metric "$PORT" pullback_bytes_sent_total)
  hook=$(grep -ho 'after [0-9.]*s' "$P"/exporter/logs/*.log | tail -1 | tr -dc '0-9.')
  cmp -s "$P/clone/restore/dump.sql" "$P/src/dump.sql" || { say "clone differs from v$v"; exit 1; }
  ROWS+=("$(printf '| pgtext | pullback pipeline | cycle v%s | %.2f | %.2f | %.2f | %.3f | %.3f | ok |' "$v" \
    "$(echo "$t1 - $t0" | bc)" "$hook" "$(echo "$t1 - $t0 - $hook" | bc)" \
    "$(echo "($e1 - $e0) / 1000000" | bc -l)" "$(echo "($p1 - $p0) / 1000000" | bc -l)")")
}
say "cycle v1"; cycle 1
say "cycle v2"; cycle 2
say "rsync v1 -> v2 (--no-whole-file) for the same update"
rm -rf "$P/rsync"; mkdir -p "$P/rsync"; cp "$D/pgtext_v1/dump.sql" "$P/rsync/"
sent=$(rsync -a --no-whole-file --stats --no-h "$D/pgtext_v2/dump.sql" "$P/rsync/" | awk -F': ' '/^Total bytes sent/{gsub(/[^0-9]/,"",$2); print $2}')
echo
echo "### Full cycle on loopback (pgtext, $(stat -c %s "$D/pgtext_v2/dump.sql") B dump)"
echo
echo "| Data | Tool | Step | Wall s (run -> clone verified) | Export hook s | Wall minus hooks s | exporter->pbs MB | pbs->importer MB | Check |"
echo "|---|---|---|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${ROWS[@]}"
printf '| pgtext | rsync --no-whole-file | v1 -> v2 | | | | %.3f | | |\n' "$(echo "$sent / 1000000" | bc -l)"
echo
echo "Targets: v2 each leg <= 2 MB; v2 wall minus hooks <= 10 s."
