#!/usr/bin/env bash
# make demo: a full export -> PBS -> clone cycle on loopback, in a temp folder,
# with the `files` hook over a sample directory. No outside service.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PULLBACK_BIN_DIR:-$ROOT/target/debug}
HOOKS=$ROOT/deploy/hooks/files
W=$(mktemp -d /tmp/pullback-demo.XXXXXX)
PIDS=()
cleanup() {
  touch "$W/stop"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f -- "--config $W/" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }
P_PBS=${DEMO_PORT_BASE:-17800}; P_EXP=$((P_PBS + 1)); P_IMP=$((P_PBS + 2))
P_EXP1=$((P_PBS + 3)); P_SPARE=$((P_PBS + 4))
T_NOTIFY=demo-exporter-notifies-pbs T_PULL=demo-pbs-reads-the-exporter
T_PUSH=demo-pbs-pushes-to-the-clone T_CLONE=demo-clone-pulls-from-the-pbs T_ADMIN=demo-admin-token-0123
T_PULL1=demo-pbs-reads-clone1s-exporter T_PUSH2=demo-pbs-pushes-to-the-spare T_SPARE=demo-spare-pulls-from-the-pbs

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

PASSWORD="demo takeover password"
HASH=$(printf '%s\n' "$PASSWORD" | "$BIN/importer" hash-password)
cat > "$W/pbs.toml" <<TOML
state_dir = "$W/pbs"
[archive]
path = "$W/pbs/archive"
[retention]
keep_last = 10
[server]
listen = "127.0.0.1:$P_PBS"
tokens = [{ peer = "exporter", token = "$T_NOTIFY" }, { peer = "clone1", token = "$T_CLONE" }, { peer = "clone2", token = "$T_SPARE" }, { peer = "admin", token = "$T_ADMIN" }]
[[source]]
name = "demo"
max_age_secs = 3600
exporter = { name = "exporter", url = "http://127.0.0.1:$P_EXP", token = "$T_PULL" }
[[importer]]
name = "clone1"
url = "http://127.0.0.1:$P_IMP"
token = "$T_PUSH"
takeover_password_hash = "$HASH"
exporter = { url = "http://127.0.0.1:$P_EXP1", token = "$T_PULL1" }
[[importer]]
name = "clone2"
url = "http://127.0.0.1:$P_SPARE"
token = "$T_PUSH2"
spare = true
TOML
# exporter_toml FILE NAME DIR PORT PULL_TOKEN NOTIFY_TOKEN [EXTRA TOML LINES]
exporter_toml() {
  cat > "$1" <<TOML
name = "$2"
source = "demo"
backup_dir = "$3/backup"
state_dir = "$3"
schedule = "off"
${7:-}
[hooks]
export = "$HOOKS/export"
demote = "$HOOKS/demote"
[server]
listen = "127.0.0.1:$4"
tokens = [{ peer = "pbs", token = "$5" }, { peer = "admin", token = "$T_ADMIN" }]
[[pbs]]
name = "pbs"
url = "http://127.0.0.1:$P_PBS"
token = "$6"
TOML
}
# importer_toml FILE NAME DIR PORT PUSH_TOKEN COORDINATOR_TOKEN [EXTRA TOML LINES]
importer_toml() {
  cat > "$1" <<TOML
name = "$2"
store = "$3/store"
restore_dir = "$3/restore"
state_dir = "$3"
${7:-}
[hooks]
import = "$HOOKS/import"
verify = "$HOOKS/verify"
promote = "$HOOKS/promote"
[server]
listen = "127.0.0.1:$4"
tokens = [{ peer = "pbs", token = "$5" }, { peer = "admin", token = "$T_ADMIN" }]
[coordinator]
name = "pbs"
url = "http://127.0.0.1:$P_PBS"
token = "$6"
[takeover]
password_hash = "$HASH"
TOML
}
exporter_toml "$W/exporter.toml" exporter "$W/exporter" "$P_EXP" "$T_PULL" "$T_NOTIFY"
# clone1 is one node with both configs and one role file: its launcher runs the importer
# while it is a clone and the exporter once it is MAIN.
importer_toml "$W/importer.toml" clone1 "$W/clone" "$P_IMP" "$T_PUSH" "$T_CLONE" "role_file = \"$W/clone/role.json\""
exporter_toml "$W/clone-exporter.toml" clone1 "$W/clone/exporter" "$P_EXP1" "$T_PULL1" "$T_CLONE" "role_file = \"$W/clone/role.json\""
importer_toml "$W/spare.toml" clone2 "$W/spare" "$P_SPARE" "$T_PUSH2" "$T_SPARE"

say "start pbs, the exporter (the main), clone1 and a spare clone2 on 127.0.0.1:$P_PBS-$P_SPARE"
export PULLBACK_LOG=${PULLBACK_LOG:-warn}
"$BIN/pbs" --config "$W/pbs.toml" serve 2>"$W/pbs.log" & PIDS+=($!)
PULLBACK_FILES_SOURCE=$W/src "$BIN/exporter" --config "$W/exporter.toml" serve 2>"$W/exporter.log" & EXP_PID=$!
PIDS+=($EXP_PID)
PULLBACK_FILES_TARGET=$W/spare/data "$BIN/importer" --config "$W/spare.toml" serve 2>"$W/spare.log" & PIDS+=($!)
# clone1's supervisor (systemd's Restart=always): the launcher again whenever it exits.
(
  export PULLBACK_BIN=$BIN PULLBACK_ROLE=$W/clone/role.json
  export PULLBACK_EXPORTER_CONF=$W/clone-exporter.toml PULLBACK_IMPORTER_CONF=$W/importer.toml
  export PULLBACK_FILES_SOURCE=$W/clone/data PULLBACK_FILES_TARGET=$W/clone/data
  while [ ! -e "$W/stop" ]; do sh "$ROOT/deploy/systemd/pullback-node" 2>>"$W/clone1.log" || true; sleep 0.2; done
) & PIDS+=($!)
for p in $P_PBS $P_EXP $P_IMP $P_SPARE; do
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
cat <<'TXT'
How to read them: the PBS coordinates the nodes. The EPOCH is the number of the current
main's term: it starts at 0 and every takeover or switchover adds one; nothing is
accepted from an older epoch (a fenced main cannot publish). Each node is MAIN (exports)
or BACKUP (receives), with a status: Leader (the main), Follower (a clone ready to take
over), Spare (configured, receives nothing until a takeover needs it), Broken (a fenced
former main, until an operator rejoins it).
TXT
"$BIN/exporter" --config "$W/exporter.toml" status
"$BIN/pbs" --config "$W/pbs.toml" status
"$BIN/importer" --config "$W/importer.toml" status

# clone1's importer status, as JSON field $1 of last_valid, or of the whole status.
imp_field() { "$BIN/importer" --config "$1" status --json 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); v=v.get('last_valid') or {}; print(v.get('$2',''))" 2>/dev/null || true; }
wait_until() { # wait_until WHAT CMD...: up to 30 s
  local what=$1; shift
  for _ in $(seq 300); do "$@" && return 0; sleep 0.1; done
  echo "gave up waiting for $what" >&2; exit 1
}
main_at() { "$BIN/exporter" --config "$W/clone-exporter.toml" status --json 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); sys.exit(0 if v['role']=='MAIN' and v['epoch']==$1 and v['status']=='Leader' else 1)" 2>/dev/null; }
has() { [ "$(imp_field "$1" generation)" = "$2" ]; }

say "act two: the main dies (kill -9)"
kill -9 "$EXP_PID"; wait "$EXP_PID" 2>/dev/null || true

say "take over on clone1 (its API, with the takeover password)"
curl -sS -X POST -H "Authorization: token $T_ADMIN" -H 'Content-Type: application/json' \
  -d "{\"password\": \"$PASSWORD\"}" "http://127.0.0.1:$P_IMP/v1/takeover"; echo
wait_until "clone1 to export as MAIN at epoch 1" main_at 1
echo "clone1 promoted itself, exited, and its launcher started its exporter: MAIN at epoch 1"
wait_until "the spare to receive demo/2" has "$W/spare.toml" demo/2
echo "the spare clone2 was activated and restored demo/2"

say "the new main writes and exports a third generation into the same source"
echo "row written on clone1 after the takeover" >> "$W/clone/data/data/table.csv"
"$BIN/exporter" --config "$W/clone-exporter.toml" run
wait_until "the spare to receive demo/3" has "$W/spare.toml" demo/3
diff -r --no-dereference "$W/clone/data" "$W/spare/data" && echo "the spare equals the new main"
"$BIN/pbs" archive list --archive "$W/pbs/archive"

say "statuses after the takeover (the old main is Broken)"
"$BIN/pbs" --config "$W/pbs.toml" status || true
"$BIN/importer" --config "$W/spare.toml" status
