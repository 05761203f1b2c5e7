#!/usr/bin/env bash
# fanout.sh WORKDIR — two rows for the transfer engine, on the pgtext data set made by
# bench.sh (WORKDIR/data/pgtext_v{1,2}/dump.sql), everything on loopback:
#   fan-out:     one exporter, one PBS and N = 1, 2, 4 clones; the time from the PBS's
#                commit of the v2 generation (`exporter run` returns) to the last clone
#                verified. Goal: 4 clones <= 1.3 x one clone.
#   concurrency: the v1 dump cut into 4 parts, one source each (each its own group, with
#                its own exporter, all MAIN at once), exported into one PBS by 4 `exporter
#                run` at once vs the same 4 one after another (from `run` to committed).
#                Goal: <= 0.7 x the serial time.
# Knobs: BIN (folder with exporter, pbs, importer; default: cargo build --release),
# FANOUT_CLONES (default "1 2 4"; empty: the concurrency rows only).
set -euo pipefail
NAME=fanout
. "$(dirname "$0")/pgtext-setup.sh"
F=$W/fanout
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap stop_all EXIT
PORT=${PORT_BASE:-27900}
T_ADMIN=bench-admin-token-000000 T_N=bench-notify-token-00000 T_PULL=bench-pull-token-0000000
now() { date +%s.%N; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; }

# One trio with N clones in $F/n$N; starts the daemons.
trio() {
  local n=$1 P=$F/n$1 i
  rm -rf "$P"; mkdir -p "$P/src" "$P/hooks"
  printf '#!/bin/sh\nset -e\ncp "%s/src/dump.sql" "$PULLBACK_BACKUP_DIR/dump.sql.tmp"\nmv "$PULLBACK_BACKUP_DIR/dump.sql.tmp" "$PULLBACK_BACKUP_DIR/dump.sql"\n' "$P" >"$P/hooks/export"
  chmod +x "$P/hooks/export"
  {
    printf 'state_dir = "%s/pbs"\n[archive]\npath = "%s/pbs/archive"\n[server]\nlisten = "127.0.0.1:%s"\n' "$P" "$P" "$PORT"
    printf 'tokens = [{ peer = "exporter", token = "%s" }, { peer = "admin", token = "%s" }' "$T_N" "$T_ADMIN"
    for i in $(seq "$n"); do printf ', { peer = "clone%s", token = "bench-clone-token-%08d" }' "$i" "$i"; done
    printf ']\n'
    printf '[[source]]\nname = "pgtext"\nexporter = { name = "exporter", url = "http://127.0.0.1:%s", token = "%s" }\n' $((PORT + 1)) "$T_PULL"
    for i in $(seq "$n"); do
      printf '[[importer]]\nname = "clone%s"\nurl = "http://127.0.0.1:%s"\ntoken = "bench-push-token-%08d"\n' "$i" $((PORT + 1 + i)) "$i"
    done
  } >"$P/pbs.toml"
  printf 'source = "pgtext"\nbackup_dir = "%s/exporter/backup"\nstate_dir = "%s/exporter"\nschedule = "off"\n[hooks]\nexport = "%s/hooks/export"\n[server]\nlisten = "127.0.0.1:%s"\ntokens = [{ peer = "pbs", token = "%s" }, { peer = "admin", token = "%s" }]\n[[pbs]]\nname = "pbs"\nurl = "http://127.0.0.1:%s"\ntoken = "%s"\n' \
    "$P" "$P" "$P" $((PORT + 1)) "$T_PULL" "$T_ADMIN" "$PORT" "$T_N" >"$P/exporter.toml"
  for i in $(seq "$n"); do
    printf 'name = "clone%s"\nstore = "%s/clone%s/store"\nrestore_dir = "%s/clone%s/restore"\nstate_dir = "%s/clone%s"\n[server]\nlisten = "127.0.0.1:%s"\ntokens = [{ peer = "pbs", token = "bench-push-token-%08d" }, { peer = "admin", token = "%s" }]\n[coordinator]\nname = "pbs"\nurl = "http://127.0.0.1:%s"\ntoken = "bench-clone-token-%08d"\n' \
      "$i" "$P" "$i" "$P" "$i" "$P" "$i" $((PORT + 1 + i)) "$i" "$T_ADMIN" "$PORT" "$i" >"$P/importer$i.toml"
  done
  export PULLBACK_LOG=warn
  "$BIN/pbs" --config "$P/pbs.toml" serve 2>"$P/pbs.log" & PIDS+=($!)
  for i in $(seq "$n"); do "$BIN/importer" --config "$P/importer$i.toml" serve 2>"$P/importer$i.log" & PIDS+=($!); done
  "$BIN/exporter" --config "$P/exporter.toml" serve 2>"$P/exporter.log" & PIDS+=($!)
  for p in $(seq "$PORT" $((PORT + 1 + n))); do wait_port "$p"; done
}
verified() { # verified P I: clone I's verified generation, read from the text status (a
  # python3 per poll, ~90 ms of CPU through a pyenv shim, kept most of a core of the 2 busy)
  "$BIN/importer" --config "$1/importer$2.toml" status |
    sed -n 's/^last valid: \([^ ]*\) .* verified true$/\1/p'
}
# exporter run of version V, then wait for all N clones; prints the seconds from the commit.
cycle() { # cycle N V
  local n=$1 v=$2 P=$F/n$1 t0 i
  cp "$D/pgtext_v$v/dump.sql" "$P/src/dump.sql"
  "$BIN/exporter" --config "$P/exporter.toml" run >/dev/null
  t0=$(now)
  for i in $(seq "$n"); do
    until [[ $(verified "$P" "$i") == "pgtext/$v" ]]; do sleep 0.02; done
  done
  echo "$(now) - $t0" | bc
  for i in $(seq "$n"); do
    cmp -s "$P/clone$i/restore/dump.sql" "$P/src/dump.sql" || { say "clone$i differs from v$v"; exit 1; }
  done
}
ROWS=()
declare -A FAN
for n in ${FANOUT_CLONES-1 2 4}; do
  say "fan-out: $n clone(s)"
  trio "$n"
  cycle "$n" 1 >/dev/null
  FAN[$n]=$(cycle "$n" 2)
  ROWS+=("$(printf '| pgtext | pullback | fan-out v2, %s clone(s): commit -> last clone verified | %.2f | ok |' "$n" "${FAN[$n]}")")
  stop_all
done

say "concurrency: 4 sources, each its own group and exporter, into one PBS: serial then at once"
C=$F/conc
rm -rf "$C"; mkdir -p "$C/parts"
split -n l/4 -d "$D/pgtext_v1/dump.sql" "$C/parts/p"
for k in 0 1 2 3; do mkdir -p "$C/src$k"; mv "$C/parts/p0$k" "$C/src$k/dump.sql"; cat "$C/src$k/dump.sql" >/dev/null; done
# conc_start NAME: a PBS with sources s0..s3, each pulled from its own exporter (no clones).
conc_start() {
  local P=$C/$1 k
  mkdir -p "$P/hooks"
  {
    printf 'state_dir = "%s/pbs"\n[archive]\npath = "%s/pbs/archive"\n[server]\nlisten = "127.0.0.1:%s"\n' "$P" "$P" "$PORT"
    printf 'tokens = [{ peer = "admin", token = "%s" }' "$T_ADMIN"
    for k in 0 1 2 3; do printf ', { peer = "e%s", token = "bench-notify-e%s-000000" }' "$k" "$k"; done
    printf ']\n'
    for k in 0 1 2 3; do
      printf '[[source]]\nname = "s%s"\nexporter = { name = "e%s", url = "http://127.0.0.1:%s", token = "%s" }\n' "$k" "$k" $((PORT + 1 + k)) "$T_PULL"
    done
  } >"$P/pbs.toml"
  for k in 0 1 2 3; do
    printf '#!/bin/sh\nset -e\ncp "%s/src%s/dump.sql" "$PULLBACK_BACKUP_DIR/dump.sql.tmp"\nmv "$PULLBACK_BACKUP_DIR/dump.sql.tmp" "$PULLBACK_BACKUP_DIR/dump.sql"\n' "$C" "$k" >"$P/hooks/export$k"
    chmod +x "$P/hooks/export$k"
    printf 'name = "e%s"\nsource = "s%s"\nbackup_dir = "%s/e%s/backup"\nstate_dir = "%s/e%s"\nschedule = "off"\n[hooks]\nexport = "%s/hooks/export%s"\n[server]\nlisten = "127.0.0.1:%s"\ntokens = [{ peer = "pbs", token = "%s" }, { peer = "admin", token = "%s" }]\n[[pbs]]\nname = "pbs"\nurl = "http://127.0.0.1:%s"\ntoken = "bench-notify-e%s-000000"\n' \
      "$k" "$k" "$P" "$k" "$P" "$k" "$P" "$k" $((PORT + 1 + k)) "$T_PULL" "$T_ADMIN" "$PORT" "$k" >"$P/exporter$k.toml"
  done
  export PULLBACK_LOG=warn
  "$BIN/pbs" --config "$P/pbs.toml" serve 2>"$P/pbs.log" & PIDS+=($!)
  wait_port "$PORT"
  for k in 0 1 2 3; do "$BIN/exporter" --config "$P/exporter$k.toml" serve 2>"$P/exporter$k.log" & PIDS+=($!); done
  for k in 0 1 2 3; do wait_port $((PORT + 1 + k)); done
  # Each exporter is its group's MAIN once the PBS has answered its hello.
  for k in 0 1 2 3; do
    until "$BIN/exporter" --config "$P/exporter$k.toml" status --json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["role"] == "MAIN" else 1)' 2>/dev/null; do sleep 0.1; done
  done
}
conc_start serial
t0=$(now)
for k in 0 1 2 3; do "$BIN/exporter" --config "$C/serial/exporter$k.toml" run >/dev/null; done
SERIAL=$(echo "$(now) - $t0" | bc)
stop_all
conc_start parallel
t0=$(now)
CP=()
for k in 0 1 2 3; do "$BIN/exporter" --config "$C/parallel/exporter$k.toml" run >/dev/null & CP+=($!); done
for p in "${CP[@]}"; do wait "$p" || { say "a concurrent export failed"; exit 1; }; done
PARALLEL=$(echo "$(now) - $t0" | bc)
stop_all
"$BIN/pbs" archive verify --archive "$C/parallel/pbs/archive" >/dev/null || { say "verify failed after the concurrent exports"; exit 1; }
[[ $("$BIN/pbs" archive list --archive "$C/parallel/pbs/archive" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') == 4 ]] || { say "not 4 generations"; exit 1; }
ROWS+=("$(printf '| pgtext/4 | pullback | concurrency: 4 sources exported one after another into one PBS | %.2f | ok |' "$SERIAL")")
ROWS+=("$(printf '| pgtext/4 | pullback | concurrency: the same 4 exported at once | %.2f | ok |' "$PARALLEL")")

echo
echo "### Transfer engine: fan-out and concurrency (loopback, $(nproc) cores)"
echo
echo "| Data | Tool | Step | Wall s | Check |"
echo "|---|---|---|---:|---|"
printf '%s\n' "${ROWS[@]}"
echo
ratio() { echo "scale=2; $1 / $2" | bc; }
r4=$( [[ -n ${FAN[4]:-} && -n ${FAN[1]:-} ]] && ratio "${FAN[4]}" "${FAN[1]}" || echo "n/a"); rc=$(ratio "$PARALLEL" "$SERIAL")
pass() { [[ $1 == n/a ]] && { echo "not run"; return; }; [[ $(echo "$1 <= $2" | bc) == 1 ]] && echo PASS || echo FAIL; }
echo "Targets: fan-out 4 clones / 1 clone = $r4 (goal <= 1.3): $(pass "$r4" 1.3); concurrency at once / serial = $rc (goal <= 0.7): $(pass "$rc" 0.7)."
