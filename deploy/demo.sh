#!/usr/bin/env bash
# make demo: a full export -> PBS -> clone cycle on loopback, in a temp folder,
# with the `files` hook over a sample directory. No outside service.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PULLBACK_BIN_DIR:-$ROOT/target/debug}
HOOKS=$ROOT/deploy/hooks/files
W=$(mktemp -d /tmp/pullback-demo.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }
P_PBS=${DEMO_PORT_BASE:-17800}; P_EXP=$((P_PBS + 1)); P_IMP=$((P_PBS + 2))
T_NOTIFY=demo-exporter-notifies-pbs T_PULL=demo-pbs-reads-the-exporter
T_PUSH=demo-pbs-pushes-to-the-clone T_CLONE=demo-clone-pulls-from-the-pbs T_ADMIN=demo-admin-token-0123

say "sample directory $W/src"
mkdir -p "$W/src/docs" "$W/src/data" "$W/src/empty-dir"
cp -r /usr/share/doc/bash "$W/src/docs/" 2>/dev/null || echo "some text" > "$W/src/docs/readme"
python3 - "$W/src/data/table.csv" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(200000):
        f.write(f"{i},{(i * 2654435761) % 1000003},account-{i:08d},{'x' * (i % 17)}\n")
PY
ln -s data/table.csv "$W/src/latest.csv"
: > "$W/src/empty-file"
du -sh "$W/src" | cut -f1

cat > "$W/pbs.toml" <<TOML
state_dir = "$W/pbs"
[archive]
path = "$W/pbs/archive"
[retention]
keep_last = 10
[server]
listen = "127.0.0.1:$P_PBS"
tokens = [{ peer = "exporter", token = "$T_NOTIFY" }, { peer = "clone1", token = "$T_CLONE" }, { peer = "admin", token = "$T_ADMIN" }]
[[source]]
name = "demo"
max_age_secs = 3600
exporter = { name = "exporter", url = "http://127.0.0.1:$P_EXP", token = "$T_PULL" }
[[importer]]
name = "clone1"
url = "http://127.0.0.1:$P_IMP"
token = "$T_PUSH"
TOML
cat > "$W/exporter.toml" <<TOML
source = "demo"
backup_dir = "$W/exporter/backup"
state_dir = "$W/exporter"
schedule = "off"
[hooks]
export = "$HOOKS/export"
[server]
listen = "127.0.0.1:$P_EXP"
tokens = [{ peer = "pbs", token = "$T_PULL" }, { peer = "admin", token = "$T_ADMIN" }]
[[pbs]]
name = "pbs"
url = "http://127.0.0.1:$P_PBS"
token = "$T_NOTIFY"
TOML
cat > "$W/importer.toml" <<TOML
name = "clone1"
store = "$W/clone/store"
restore_dir = "$W/clone/restore"
state_dir = "$W/clone"
[hooks]
import = "$HOOKS/import"
verify = "$HOOKS/verify"
[server]
listen = "127.0.0.1:$P_IMP"
tokens = [{ peer = "pbs", token = "$T_PUSH" }, { peer = "admin", token = "$T_ADMIN" }]
[coordinator]
name = "pbs"
url = "http://127.0.0.1:$P_PBS"
token = "$T_CLONE"
TOML

say "start pbs, importer and exporter on 127.0.0.1:$P_PBS-$P_IMP"
export PULLBACK_FILES_SOURCE=$W/src PULLBACK_FILES_TARGET=$W/clone/data PULLBACK_LOG=${PULLBACK_LOG:-warn}
"$BIN/pbs" --config "$W/pbs.toml" serve 2>"$W/pbs.log" & PIDS+=($!)
"$BIN/importer" --config "$W/importer.toml" serve 2>"$W/importer.log" & PIDS+=($!)
"$BIN/exporter" --config "$W/exporter.toml" serve 2>"$W/exporter.log" & PIDS+=($!)
for p in $P_PBS $P_EXP $P_IMP; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done

metric() { # metric PORT NAME: sum of a metric's series
  curl -fsS -H "Authorization: token $T_ADMIN" "http://127.0.0.1:$1/metrics" |
    awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d", s}'
}
cycle() {
  local e0 p0 e1 p1
  e0=$(metric "$P_EXP" pullback_bytes_sent_total); p0=$(metric "$P_PBS" pullback_bytes_sent_total)
  "$BIN/exporter" --config "$W/exporter.toml" run
  # the PBS pushes right after it commits: wait for the clone to report it
  for _ in $(seq 300); do
    [ "$("$BIN/importer" --config "$W/importer.toml" status --json | python3 -c 'import json,sys; v=json.load(sys.stdin)["last_valid"]; print(v["generation"] if v else "")')" = "demo/$1" ] && break
    sleep 0.1
  done
  e1=$(metric "$P_EXP" pullback_bytes_sent_total); p1=$(metric "$P_PBS" pullback_bytes_sent_total)
  echo "bytes on the wire: exporter -> pbs $((e1 - e0)), pbs -> clone $((p1 - p0))"
  diff -r --no-dereference "$W/src" "$W/clone/data" && echo "the clone equals the source"
}

say "first export"
cycle 1

say "change the source: update rows in the middle, append rows, delete a file"
python3 - "$W/src/data/table.csv" <<'PY'
import sys
p = sys.argv[1]
lines = open(p).read().splitlines(keepends=True)
for i in range(50000, 200000, 5000):
    lines[i] = lines[i].replace("account", "ACCOUNT")
lines += [f"{i},0,new-{i},\n" for i in range(200000, 201000)]
open(p, "w").writelines(lines)
PY
rm -f "$W/src/empty-file"

say "second export (only the change travels)"
cycle 2

say "statuses"
"$BIN/exporter" --config "$W/exporter.toml" status
"$BIN/pbs" --config "$W/pbs.toml" status
"$BIN/importer" --config "$W/importer.toml" status
