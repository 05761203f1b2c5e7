#!/usr/bin/env bash
# shellcheck disable=SC2129 # several steps append to the same log on purpose
# bench/bench.sh — pullback benchmark harness.
#
# Runs the same three-step sequence (backup v1, backup v2 = "next day", restore v2)
# with pullback (pbs), restic and borg on two data sets:
#   pgtext  plain pg_dump of a pgbench database whose accounts.filler holds md5 text
#   tree    a ~0.5 GB copy of /usr/share, /usr/lib/python3*, /usr/lib/gcc
# and prints one Markdown table plus a list of pass/fail targets for pullback.
#
# Usage:   bash bench/bench.sh WORKDIR          (as root, Debian 12)
# Knobs (environment variables):
#   DATASETS="pgtext tree"          data sets to run
#   TOOLS="pullback pullback-s3 pullback-1cpu pullback-s3-1cpu restic borg"  tools to run
#                                   (pullback-s3: the archive in a Garage S3 server on
#                                   loopback, started by this script; -1cpu: pbs held to
#                                   CPU 0 and Garage to the others, as if on a host of its own)
#   REPEAT=1                        runs per sequence (fresh repository each); medians reported
#   SCALE=30                        pgbench scale factor of pgtext
#   PGB_TX=10000                    pgbench transactions per client (2 clients) for the next day
#   FORCE_DATA=0                    1 = regenerate the data sets even if present
#   QUICK=0                         1 = smoke test: SCALE=2, PGB_TX=2000, tree from /usr/share/doc only
#   COLD=0                          1 = sync + drop page cache before every timed step
#   PB=path/to/pbs                  use this binary; if unset, `cargo build --release -p pbs` is run
#   TREE_SOURCES, TREE_EXCLUDES     where the tree data set is copied from
# Output: table on stdout and in WORKDIR/results/report.md, raw rows in
# WORKDIR/results/bench.tsv, tool output in WORKDIR/log/. Progress goes to stderr.
# Exit status: 0, or 1 if a step failed, or 3 if a restore did not match its input.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W=$(realpath -m "${1:?usage: bench.sh WORKDIR}")

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  SCALE=${SCALE:-2}
  PGB_TX=${PGB_TX:-2000}
  TREE_SOURCES=${TREE_SOURCES:-/usr/share/doc}
fi
SCALE=${SCALE:-30}
PGB_TX=${PGB_TX:-10000}
TREE_SOURCES=${TREE_SOURCES:-/usr/share /usr/lib/python3.11 /usr/lib/python3 /usr/lib/gcc}
TREE_EXCLUDES=${TREE_EXCLUDES:-package-lists locale}
DATASETS=${DATASETS:-pgtext tree}
TOOLS=${TOOLS:-pullback pullback-s3 pullback-1cpu pullback-s3-1cpu restic borg}
REPEAT=${REPEAT:-1}
FORCE_DATA=${FORCE_DATA:-0}
COLD=${COLD:-0}
PGDB=${PGDB:-pullback_bench_text}
PGC=(-h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres) # trust auth expected (see pg_start)

# restic always encrypts: a fixed, public password (its encryption cost is part of its figures).
export RESTIC_PASSWORD=pullback-bench-not-a-secret
export RESTIC_CACHE_DIR=$W/cache/restic
export BORG_BASE_DIR=$W/cache/borg
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export LC_ALL=C

D=$W/data RES=$W/results LOG=$W/log TMP=$W/tmp TSV=$W/results/bench.tsv

say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
set -E
trap 'if [[ $BASHPID == "$$" ]]; then say "aborted at line $LINENO (${FUNCNAME[*]:-main}): $BASH_COMMAND"; fi' ERR
has() { command -v "$1" >/dev/null 2>&1; }
listed() { [[ " $2 " == *" $1 "* ]]; } # listed WORD LIST
bytes() { du -sb "$1" | cut -f1; }

ALL_TOOLS="pullback pullback-s3 pullback-1cpu pullback-s3-1cpu restic borg"
for t in $TOOLS; do listed "$t" "$ALL_TOOLS" || die "unknown tool '$t' (TOOLS: $ALL_TOOLS)"; done
if [[ $TOOLS == *1cpu* ]] && (($(nproc) < 2)); then die "the -1cpu tools need at least 2 CPUs"; fi
# shellcheck source=bench/garage.sh
source "$ROOT/bench/garage.sh"
trap garage_stop EXIT
for ds in $DATASETS; do listed "$ds" "pgtext tree" || die "unknown data set '$ds' (DATASETS: pgtext tree)"; done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"
[[ $SCALE =~ ^[1-9][0-9]*$ ]] || die "SCALE must be a positive integer"
[[ $(id -u) == 0 ]] || say "warning: not root; package installation and COLD=1 will fail"
mkdir -p "$D" "$RES" "$LOG" "$TMP" "$W/repo" "$W/stage" "$W/restore" "$W/cache"

# timed LOG CMD... : run CMD under GNU time, output appended to LOG.
# Sets T_WALL (s), T_CPU (user+sys s), T_RSS (peak RSS of the largest process, kB).
timed() {
  local log=$1 tf=$TMP/time.txt t0 t1 rc=0
  shift
  sync
  if [[ $COLD == 1 ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
  printf '### %s %s\n' "$(date -Is)" "$*" >>"$log"
  t0=$(date +%s.%N)
  /usr/bin/time -v -o "$tf" "$@" >>"$log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  if ((rc != 0)); then
    say "FAILED (exit $rc): $*"
    say "last lines of its output ($log):"
    tail -n 20 "$log" >&2
    cat "$tf" >>"$log"
    return 1
  fi
  cat "$tf" >>"$log"
  T_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  T_CPU=$(awk -F': ' '/User time/ { u = $2 } /System time/ { s = $2 } END { printf "%.2f", u + s }' "$tf")
  T_RSS=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tf")
}

# rec DS TOOL STEP RUN INPUT_BYTES REPO_BYTES [CHECK] : one raw row from the last `timed`
rec() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" \
    "$T_WALL" "$T_CPU" "$T_RSS" "$5" "$6" "${7:-}" >>"$TSV"
}

# ------------------------------------------------------------------ setup
setup() {
  local need=()
  if listed restic "$TOOLS" && ! has restic; then need+=(restic); fi
  if listed borg "$TOOLS" && ! has borg; then need+=(borgbackup); fi
  has rsync || need+=(rsync)
  has zstd || need+=(zstd)
  has python3 || need+=(python3)
  [[ -x /usr/bin/time ]] || need+=(time)
  if listed pgtext "$DATASETS" && ! pgtext_fresh; then
    # pgbench/pg_dump/psql come with postgresql-client-NN, the server with postgresql
    if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null ||
      ! compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null; then
      need+=(postgresql)
    fi
  fi
  if ((${#need[@]})); then
    say "installing: ${need[*]}"
    apt-get update -q >"$LOG/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >>"$LOG/apt.log" 2>&1 ||
      { tail -n 20 "$LOG/apt.log" >&2; die "apt-get install failed (see $LOG/apt.log)"; }
  fi
}

build_pullback() {
  if [[ -n ${PB:-} ]]; then
    if [[ $PB == */* ]]; then PB=$(realpath -m "$PB"); fi
    say "pullback: using PB=$PB (no build)"
  else
    local cargo=cargo td=${CARGO_TARGET_DIR:-target}
    if ! has cargo && [[ -x $HOME/.cargo/bin/cargo ]]; then cargo=$HOME/.cargo/bin/cargo; fi
    say "pullback: cargo build --release -p pbs (in $ROOT)"
    (cd "$ROOT" && "$cargo" build --release -p pbs) >&2
    [[ $td == /* ]] || td=$ROOT/$td
    PB=$td/release/pbs
  fi
  if [[ $PB == */* ]]; then [[ -x $PB ]] || die "pullback binary not executable: $PB"; else has "$PB" || die "pullback binary not found: $PB"; fi
}

versions() {
  local rev
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "(no commit)")
  if [[ -n $(git -C "$ROOT" --no-optional-locks status --porcelain 2>/dev/null | head -n1) ]]; then rev+=" + uncommitted changes"; fi
  {
    if [[ " $TOOLS" == *" pullback"* ]]; then printf 'pullback\t%s (%s)\n' "$("$PB" --version 2>/dev/null | head -n1 || true)" "$PB; git $rev"; fi
    if listed restic "$TOOLS"; then printf 'restic\t%s\n' "$(restic version | head -n1 | cut -d' ' -f1-2)"; fi
    if listed borg "$TOOLS"; then printf 'borg\t%s\n' "$(borg --version)"; fi
    printf 'machine\t%s x%s, %s, kernel %s\n' "$(lscpu | sed -n 's/^Model name: *//p' | head -n1)" "$(nproc)" \
      "$(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)"
    printf 'disk\t%s\n' "$(findmnt -n -o SOURCE,FSTYPE --target "$W" | head -n1)"
  } >"$RES/versions.tsv"
}

# ------------------------------------------------------------------ PostgreSQL
pg_start() {
  # shellcheck disable=SC2012 # version directory names like 15, 16
  PGVER=${PGVER:-$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)}
  # shellcheck disable=SC2012
  [[ -n $PGVER ]] || PGVER=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n $PGVER ]] || die "no PostgreSQL installed"
  export PATH=/usr/lib/postgresql/$PGVER/bin:$PATH
  if ! pg_lsclusters -h | awk -v v="$PGVER" '$1 == v && $2 == "main" { f = 1 } END { exit !f }'; then
    say "creating PostgreSQL $PGVER cluster main (trust auth on 127.0.0.1)"
    pg_createcluster "$PGVER" main -- --auth-local=peer --auth-host=trust >>"$LOG/pg.log" 2>&1
  fi
  if ! pg_lsclusters -h | awk -v v="$PGVER" '$1 == v && $2 == "main" && $4 ~ /online/ { f = 1 } END { exit !f }'; then
    say "starting PostgreSQL $PGVER cluster main"
    pg_ctlcluster --skip-systemctl-redirect "$PGVER" main start >>"$LOG/pg.log" 2>&1
  fi
  local i
  for i in $(seq 30); do
    if pg_isready -q -h 127.0.0.1 -p "${PGPORT:-5432}"; then break; fi
    sleep 1
  done
  if ! psql "${PGC[@]}" -w -Atc 'select 1' postgres >/dev/null 2>&1; then
    # A stock Debian cluster asks for a password on 127.0.0.1. This harness expects
    # trust auth there for the postgres role (bench machine), so grant it.
    local hba=/etc/postgresql/$PGVER/main/pg_hba.conf
    say "psql -h 127.0.0.1 -U postgres is refused: adding 'host all postgres 127.0.0.1/32 trust' to $hba"
    sed -i '1i host all postgres 127.0.0.1/32 trust  # added by pullback bench/bench.sh' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$PGVER" main reload >>"$LOG/pg.log" 2>&1
    sleep 1
    psql "${PGC[@]}" -w -Atc 'select 1' postgres >/dev/null || die "cannot connect: psql ${PGC[*]}"
  fi
}

# ------------------------------------------------------------------ data sets
pgtext_params() { echo "scale=$SCALE pgbench_tx=$PGB_TX"; }
pgtext_fresh() {
  [[ $FORCE_DATA != 1 && -s $D/pgtext_v1/dump.sql && -s $D/pgtext_v2/dump.sql &&
    $(cat "$D/pgtext.params" 2>/dev/null) == "$(pgtext_params)" ]]
}

# pgbench database (scale SCALE) whose pgbench_accounts.filler is md5(aid) text so that the
# dump compresses ~4x like real data. v1 = plain dump; the "next day" = pgbench TPC-B load
# (2 clients x PGB_TX transactions, seed 42), a contiguous UPDATE of 1% of the accounts and
# an INSERT of 0.5% new accounts; v2 = plain dump again.
gen_pgtext() {
  if pgtext_fresh; then say "data: pgtext present ($(pgtext_params)), kept"; return; fi
  pg_start
  local db=$PGDB n=$((100000 * SCALE)) L=$LOG/data-pgtext.log
  say "data: generating pgtext (pgbench scale $SCALE, md5 filler; next day $((2 * PGB_TX)) tx)"
  rm -rf "$D/pgtext_v1" "$D/pgtext_v2" "$D/pgtext.params" "$D/pgtext.info"
  mkdir -p "$D/pgtext_v1" "$D/pgtext_v2"
  : >"$L"
  dropdb "${PGC[@]}" --if-exists "$db" >>"$L" 2>&1
  createdb "${PGC[@]}" "$db" >>"$L" 2>&1
  pgbench "${PGC[@]}" -i -q -s "$SCALE" -I dtg "$db" >>"$L" 2>&1
  psql "${PGC[@]}" -q -v ON_ERROR_STOP=1 -c 'TRUNCATE pgbench_accounts' \
    -c "INSERT INTO pgbench_accounts SELECT aid, (aid - 1) / 100000 + 1, 0, md5(aid::text) FROM generate_series(1, $n) aid" \
    "$db" >>"$L" 2>&1
  pgbench "${PGC[@]}" -i -q -I vp "$db" >>"$L" 2>&1
  local size1; size1=$(psql "${PGC[@]}" -Atc "select pg_size_pretty(pg_database_size('$db'))" "$db")
  pg_dump "${PGC[@]}" -Fp "$db" >"$D/pgtext_v1/dump.sql"
  say "data: pgtext next day (pgbench -c 2 -j 2 -t $PGB_TX --random-seed=42, 1% UPDATE, 0.5% INSERT)"
  pgbench "${PGC[@]}" -c 2 -j 2 -t "$PGB_TX" --random-seed=42 "$db" >>"$L" 2>&1
  psql "${PGC[@]}" -q -v ON_ERROR_STOP=1 "$db" >>"$L" 2>&1 <<SQL
UPDATE pgbench_accounts SET abalance = abalance + 7, filler = 'next-day batch adjustment'
 WHERE aid > $((n / 2)) AND aid <= $((n / 2 + n / 100));
INSERT INTO pgbench_accounts (aid, bid, abalance, filler)
 SELECT $n + g, 1 + (g % $SCALE), g % 1000, md5('new' || g) FROM generate_series(1, $((n / 200))) g;
SQL
  local size2; size2=$(psql "${PGC[@]}" -Atc "select pg_size_pretty(pg_database_size('$db'))" "$db")
  pg_dump "${PGC[@]}" -Fp "$db" >"$D/pgtext_v2/dump.sql"
  dropdb "${PGC[@]}" "$db" >>"$L" 2>&1 # the dumps are all we need; don't leave the database around
  {
    printf 'pgtext\tpgbench scale %s (db %s -> %s), next day %s tx + UPDATE %s + INSERT %s accounts; dump v1 %s B, v2 %s B\n' \
      "$SCALE" "$size1" "$size2" "$((2 * PGB_TX))" "$((n / 100))" "$((n / 200))" \
      "$(bytes "$D/pgtext_v1/dump.sql")" "$(bytes "$D/pgtext_v2/dump.sql")"
  } >"$D/pgtext.info"
  pgtext_params >"$D/pgtext.params"
}

tree_params() { echo "sources=$TREE_SOURCES excludes=$TREE_EXCLUDES"; }
gen_tree() {
  if [[ $FORCE_DATA != 1 && -d $D/tree_v1 && -d $D/tree_v2 && $(cat "$D/tree.params" 2>/dev/null) == "$(tree_params)" ]]; then
    say "data: tree present ($(tree_params)), kept"
    return
  fi
  say "data: generating tree from $TREE_SOURCES (excluding top-level $TREE_EXCLUDES)"
  rm -rf "$D/tree_v1" "$D/tree_v2" "$D/tree_v1.tmp" "$D/tree_v2.tmp" "$D/tree.params" "$D/tree.info"
  mkdir -p "$D/tree_v1.tmp"
  local src ex=()
  for src in $TREE_EXCLUDES; do ex+=("--exclude=/$src"); done
  for src in $TREE_SOURCES; do
    if [[ ! -d $src ]]; then say "data: $src missing, skipped"; continue; fi
    mkdir -p "$D/tree_v1.tmp$(dirname "$src")"
    rsync -a "${ex[@]}" "$src/" "$D/tree_v1.tmp$src/"
  done
  mv "$D/tree_v1.tmp" "$D/tree_v1"
  cp -a "$D/tree_v1" "$D/tree_v2.tmp"
  say "data: tree v2 (seed 42: 0.5% files get 16-512 bytes inserted, 0.1% deleted, 0.5% new)"
  python3 - "$D/tree_v2.tmp" >"$D/tree.info.tmp" <<'PY'
import base64, os, random, sys

top = sys.argv[1]
rng = random.Random(42)
regular = sorted(
    os.path.join(d, name)
    for d, _, names in os.walk(top)
    for name in names
    if os.path.isfile(os.path.join(d, name)) and not os.path.islink(os.path.join(d, name))
)
count = len(regular)
n_edit, n_drop, n_new = count // 200, count // 1000, count // 200
chosen = rng.sample(regular, n_edit + n_drop)
edit, drop = chosen[:n_edit], chosen[n_edit:]
inserted = 0
for path in edit:  # insert random bytes at a random offset: the rest of the file shifts
    with open(path, "rb") as f:
        body = f.read()
    at = rng.randrange(len(body) + 1)
    extra = rng.randbytes(rng.randint(16, 512))
    inserted += len(extra)
    with open(path, "wb") as f:
        f.write(body[:at] + extra + body[at:])
for path in drop:
    os.remove(path)
dropped = set(drop)
kept = [p for p in regular if p not in dropped]
added = 0
for i in range(n_new):  # new files next to a random survivor, about its size
    model = rng.choice(kept)
    size = min(os.path.getsize(model), 1 << 20)
    body = base64.b64encode(rng.randbytes(size * 3 // 4 + 1))[:size]
    added += len(body)
    with open(os.path.join(os.path.dirname(model), "new-%05d.txt" % i), "wb") as f:
        f.write(body)
print(f"tree\tv1 {count} regular files; v2: {n_edit} modified (+{inserted} B), {n_drop} deleted, {n_new} added ({added} B)")
PY
  mv "$D/tree_v2.tmp" "$D/tree_v2"
  local v
  for v in 1 2; do
    printf 'tree v%s\t%s B, %s files, %s symlinks, %s dirs\n' "$v" "$(bytes "$D/tree_v$v")" \
      "$(find "$D/tree_v$v" -type f | wc -l)" "$(find "$D/tree_v$v" -type l | wc -l)" \
      "$(find "$D/tree_v$v" -type d | wc -l)" >>"$D/tree.info.tmp"
  done
  mv "$D/tree.info.tmp" "$D/tree.info"
  tree_params >"$D/tree.params"
}

# ------------------------------------------------------------------ sequences
# put_stage DS V : make WORKDIR/stage/DS an exact copy of version V (untimed). rsync keeps
# unchanged files' inode and mtime from v1 to v2, as a live source would; then the staged
# input is read once so that it is in the page cache.
put_stage() {
  mkdir -p "$W/stage/$1"
  rsync -a --delete "$D/${1}_v$2/" "$W/stage/$1/"
  sync
  if [[ $COLD != 1 ]]; then find "$W/stage/$1" -type f -print0 | xargs -0 -r cat >/dev/null; fi
}

# verify RESTORED ORIGINAL : prints ok or MISMATCH
verify() {
  if diff -rq --no-dereference "$1" "$2" >>"$LOG/verify.log" 2>&1; then
    echo ok
  else
    say "restore MISMATCH: $1 vs $2 (see $LOG/verify.log)"
    echo MISMATCH
  fi
}

# pullback_seq DS RUN TOOL STORE [PREFIX...] : the three steps, pbs run under PREFIX
# (taskset). STORE dir: the archive in a folder; s3: in the bucket (the folder holds
# scratch only; repo size = the objects under the run's prefix), plus a restore without
# the local copies of packs, as on a new PBS host with the same bucket.
pullback_seq() {
  local ds=$1 r=$2 t=$3 store=$4 R=$W/repo/$1-$3 T=$W/restore/$1-$3 L=$LOG/$1-$3.log b1 b2
  local C=$W/repo/$1-$3.toml P=$1-$3-run$2-$$ at step
  shift 4
  local pb=("$@" "$PB")
  rm -rf "$R" "$T"
  if [[ $store == s3 ]]; then garage_pbs_config "$C" "$R" "$P"; at=(--config "$C"); else at=(--archive "$R"); fi
  size() { if [[ $store == s3 ]]; then garage_bytes "$P"; else bytes "$R"; fi; }
  timed "$L" "${pb[@]}" archive init "${at[@]}"
  put_stage "$ds" 1
  b1=$(bytes "$W/stage/$ds")
  timed "$L" "${pb[@]}" archive ingest "${at[@]}" --source "$ds" "$W/stage/$ds"
  rec "$ds" "$t" "backup v1" "$r" "$b1" "$(size)"
  put_stage "$ds" 2
  b2=$(bytes "$W/stage/$ds")
  timed "$L" "${pb[@]}" archive ingest "${at[@]}" --source "$ds" "$W/stage/$ds"
  rec "$ds" "$t" "backup v2" "$r" "$b2" "$(size)"
  local steps=("restore v2")
  if [[ $store == s3 ]]; then steps+=("restore v2 cold"); fi
  for step in "${steps[@]}"; do
    if [[ $step == *cold ]]; then rm -rf "$R/cache"; fi
    timed "$L" "${pb[@]}" archive restore "${at[@]}" "$ds/latest" --to "$T"
    rec "$ds" "$t" "$step" "$r" "$b2" "$(size)" "$(verify "$T" "$W/stage/$ds")"
    rm -rf "$T"
  done
}
seq_pullback() { pullback_seq "$1" "$2" pullback dir; }
# pbs held to CPU 0, as pullback-s3-1cpu holds it (beside a Garage on the other CPUs).
seq_pullback_1cpu() { pullback_seq "$1" "$2" pullback-1cpu dir taskset -c 0; }
seq_pullback_s3() {
  garage_start "$W/garage"
  garage_pin "0-$(($(nproc) - 1))"
  pullback_seq "$1" "$2" pullback-s3 s3
}
# As if Garage had a host of its own: pbs on CPU 0, Garage on the others (compare with
# pullback-1cpu, which gets the same one CPU).
seq_pullback_s3_1cpu() {
  garage_start "$W/garage"
  garage_pin "1-$(($(nproc) - 1))"
  pullback_seq "$1" "$2" pullback-s3-1cpu s3 taskset -c 0
}

seq_restic() {
  local ds=$1 r=$2 R=$W/repo/$1-restic T=$W/restore/$1-restic L=$LOG/$1-restic.log b1 b2
  rm -rf "$R" "$T" "$W/cache"
  timed "$L" restic init --repo "$R" --repository-version 2
  put_stage "$ds" 1
  b1=$(bytes "$W/stage/$ds")
  timed "$L" restic -r "$R" backup --host pullback-bench "$W/stage/$ds"
  rec "$ds" restic "backup v1" "$r" "$b1" "$(bytes "$R")"
  put_stage "$ds" 2
  b2=$(bytes "$W/stage/$ds")
  timed "$L" restic -r "$R" backup --host pullback-bench "$W/stage/$ds"
  rec "$ds" restic "backup v2" "$r" "$b2" "$(bytes "$R")"
  timed "$L" restic -r "$R" restore latest --target "$T"
  # restic restores the absolute path below the target
  rec "$ds" restic "restore v2" "$r" "$b2" "$(bytes "$R")" "$(verify "$T$W/stage/$ds" "$W/stage/$ds")"
  echo "restic cache: $(bytes "$RESTIC_CACHE_DIR") B" >>"$L"
  rm -rf "$T"
}

seq_borg() {
  local ds=$1 r=$2 R=$W/repo/$1-borg T=$W/restore/$1-borg L=$LOG/$1-borg.log b1 b2
  rm -rf "$R" "$T" "$W/cache"
  timed "$L" borg init -e none "$R"
  put_stage "$ds" 1
  b1=$(bytes "$W/stage/$ds")
  timed "$L" env -C "$W/stage" borg create --stats --compression zstd,3 "$R::v1" "$ds"
  rec "$ds" borg "backup v1" "$r" "$b1" "$(bytes "$R")"
  put_stage "$ds" 2
  b2=$(bytes "$W/stage/$ds")
  timed "$L" env -C "$W/stage" borg create --stats --compression zstd,3 "$R::v2" "$ds"
  rec "$ds" borg "backup v2" "$r" "$b2" "$(bytes "$R")"
  mkdir -p "$T"
  timed "$L" env -C "$T" borg extract "$R::v2"
  rec "$ds" borg "restore v2" "$r" "$b2" "$(bytes "$R")" "$(verify "$T/$ds" "$W/stage/$ds")"
  echo "borg cache: $(bytes "$BORG_BASE_DIR") B" >>"$L"
  rm -rf "$T"
}

# The cost of just creating the files of a tree restore: tar | tar -x of the staged v2
# tree into a fresh directory (no fsync), 3 runs; the report takes the median.
tree_floor() {
  local T=$W/restore/tree-tar L=$LOG/tree-tar.log b i
  say "tree write floor: tar -c | tar -x of staged v2 (3 runs)"
  put_stage tree 2
  b=$(bytes "$W/stage/tree")
  : >"$L"
  for i in 1 2 3; do
    rm -rf "$T"
    mkdir -p "$T"
    # shellcheck disable=SC2016 # $1 $2 are expanded by the inner bash
    timed "$L" bash -o pipefail -c 'tar -C "$1" -cf - tree | tar -C "$2" -xf -' tar-copy "$W/stage" "$T"
    rec tree tar-copy "write floor v2" "$i" "$b" ""
  done
  rm -rf "$T"
}

run_all() {
  printf 'data\ttool\tstep\trun\twall_s\tcpu_s\tpeak_rss_kb\tinput_bytes\trepo_bytes\tcheck\n' >"$TSV"
  : >"$LOG/verify.log"
  local ds t r
  for ds in $DATASETS; do
    for t in $TOOLS; do
      : >"$LOG/$ds-$t.log"
      for ((r = 1; r <= REPEAT; r++)); do
        say "run: $ds / $t ($r/$REPEAT)"
        "seq_${t//-/_}" "$ds" "$r"
      done
    done
    if [[ $ds == tree ]]; then tree_floor; fi
  done
}

# ------------------------------------------------------------------ report
report() {
  python3 - "$TSV" "$RES/versions.tsv" "$D" "$DATASETS" "$REPEAT" "$COLD" "$QUICK" <<'PY'
import os, statistics, sys, time

tsv, versions, data, datasets, repeat, cold, quick = sys.argv[1:8]
MB = 1e6

rows = [l.rstrip("\n").split("\t") for l in open(tsv)][1:]
groups, order = {}, []
for ds, tool, step, run, wall, cpu, rss, inb, repo, check in rows:
    key = (ds, tool, step)
    if key not in groups:
        groups[key] = []
        order.append(key)
    groups[key].append(dict(wall=float(wall), cpu=float(cpu), rss=int(rss), inb=int(inb),
                            repo=int(repo) if repo else None, check=check))

summary = {}
for key in order:
    g = groups[key]
    med = lambda f: statistics.median(x[f] for x in g)
    s = dict(wall=med("wall"), walls=[x["wall"] for x in g], cpu=med("cpu"),
             rss=max(x["rss"] for x in g), inb=med("inb"), repo=None, growth=None, check="")
    if all(x["repo"] is not None for x in g):
        s["repo"] = med("repo")
    checks = [x["check"] for x in g if x["check"]]
    if checks:
        s["check"] = "ok" if all(c == "ok" for c in checks) else "MISMATCH"
    if key[2] == "backup v2" and (key[0], key[1], "backup v1") in groups:
        v1 = groups[(key[0], key[1], "backup v1")]
        s["growth"] = statistics.median(b["repo"] - a["repo"] for a, b in zip(v1, g))
    summary[key] = s

def info_line(name):
    p = os.path.join(data, name + ".info")
    return [l.rstrip("\n").split("\t", 1) for l in open(p)] if os.path.exists(p) else []

ver = [l.rstrip("\n").split("\t", 1) for l in open(versions)] if os.path.exists(versions) else []
print(f"## pullback benchmark ({time.strftime('%Y-%m-%d %H:%M')}"
      f"{', QUICK' if quick == '1' else ''}; {'cold' if cold == '1' else 'warm'} page cache; "
      f"median of {repeat} run(s))\n")
for k, v in ver:
    print(f"- {k}: {v}")
for ds in datasets.split():
    for k, v in info_line(ds):
        print(f"- data {k}: {v}")
print()
print("| Data | Tool | Step | Wall s | MB/s | CPU s | Peak RSS MB | Repo MB | Growth MB | Check |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
for key in order:
    ds, tool, step = key
    s = summary[key]
    wall = f"{s['wall']:.2f}"
    if len(s["walls"]) > 1:
        wall += f" ({min(s['walls']):.2f}–{max(s['walls']):.2f})"
    repo = f"{s['repo'] / MB:.1f}" if s["repo"] is not None else ""
    growth = f"{s['growth'] / MB:.2f}" if s["growth"] is not None else ""
    print(f"| {ds} | {tool} | {step} | {wall} | {s['inb'] / MB / s['wall']:.0f} | {s['cpu']:.1f} | "
          f"{s['rss'] / 1024:.0f} | {repo} | {growth} | {s['check']} |")
print("\nMB = 10^6 B. MB/s = input (or restored) bytes / wall. Growth = repository size after "
      "backup v2 minus after backup v1. Peak RSS = largest single process (GNU time), max over runs.")

print("\n### Targets (pullback, this run)\n")

summary_tools = {k[1] for k in summary}

def val(ds, tool, step, field):
    s = summary.get((ds, tool, step))
    return None if s is None else s[field]

def target(name, measured, limit, how, check=None):
    """One target line; measured/limit None = not both measured in this run."""
    if measured is None or limit is None:
        print(f"- n/a — {name}: not measured in this run (needs {how})")
        return
    verdict = "PASS" if measured <= limit else "FAIL"
    note = ""
    if check is not None and check != "ok":
        verdict, note = "FAIL", f"; restore check {check or 'missing'}"
    print(f"- {verdict} — {name}: {measured:.2f} vs target ≤ {limit:.2f} ({how}{note})")

def vs_wall(name, ds, step, other, other_step, factor):
    pb, ref = val(ds, "pullback", step, "wall"), val(ds, other, other_step, "wall")
    check = val(ds, "pullback", step, "check") if step.startswith("restore") else None
    if pb is None or ref is None:
        target(name, None, None, f"pullback and {other} on {ds}")
    else:
        target(name, pb, factor * ref, f"{factor:g} × {other} {ref:.2f} s", check)

g = val("pgtext", "pullback", "backup v2", "growth")
if g is None:
    target("pgtext backup v2 repo growth, MB", None, None, "pullback on pgtext")
else:
    target("pgtext backup v2 repo growth, MB", g / MB, 2.0, "fixed 2 MB")
vs_wall("pgtext backup v2 wall, s", "pgtext", "backup v2", "borg", "backup v2", 0.75)
vs_wall("pgtext restore v2 wall, s", "pgtext", "restore v2", "borg", "restore v2", 0.75)
# The archive on Garage: ≥ 0.8 × the local throughput (wall ≤ 1.25 × local), same growth.
# "restore v2 cold": without the PBS's local copies of packs (a new host on the bucket).
# "1 CPU each": pbs held to one CPU in both, Garage on the other (as on a host of its own).
for tl, ts, how in (("pullback", "pullback-s3", ""), ("pullback-1cpu", "pullback-s3-1cpu", ", 1 CPU each")):
    for step, s3_step in (("backup v1",) * 2, ("backup v2",) * 2, ("restore v2",) * 2,
                          ("restore v2", "restore v2 cold")):
        s3, local = val("pgtext", ts, s3_step, "wall"), val("pgtext", tl, step, "wall")
        name = f"pgtext {s3_step} on Garage{how} wall, s"
        if s3 is None or local is None:
            if not how or {tl, ts} & summary_tools:
                target(name, None, None, f"{tl} and {ts} on pgtext")
        else:
            check = val("pgtext", ts, s3_step, "check") if step.startswith("restore") else None
            target(name, s3, 1.25 * local, f"1.25 × local {local:.2f} s, i.e. ≥ 0.8 × its throughput", check)
gs, gl = val("pgtext", "pullback-s3", "backup v2", "growth"), val("pgtext", "pullback", "backup v2", "growth")
if gs is None or gl is None:
    target("pgtext backup v2 growth on Garage, MB", None, None, "pullback and pullback-s3 on pgtext")
else:
    target("pgtext backup v2 growth on Garage, MB", gs / MB, gl / MB * 1.01 + 0.01, f"the local growth {gl / MB:.2f} MB")
vs_wall("tree backup v1 wall, s", "tree", "backup v1", "restic", "backup v1", 1.0)
vs_wall("tree backup v2 wall, s", "tree", "backup v2", "restic", "backup v2", 0.5)
vs_wall("tree restore v2 wall, s", "tree", "restore v2", "tar-copy", "write floor v2", 1.25)
pbk = [(k, s) for k, s in summary.items() if k[1].startswith("pullback")]
if pbk:
    k, s = max(pbk, key=lambda kv: kv[1]["rss"])
    target("pullback peak RSS, MB", s["rss"] / 1024, 100.0, f"fixed 100 MB; worst: {k[1]} {k[0]} {k[2]}")
else:
    target("pullback peak RSS, MB", None, None, "pullback")
PY
}

# ------------------------------------------------------------------ main
avail_gb=$(df -P -BG "$W" | awk 'NR == 2 { sub(/G$/, "", $4); print $4 }')
if [[ $QUICK != 1 && $avail_gb -lt 6 ]]; then say "warning: only ${avail_gb} GB free in $W (about 5 GB needed)"; fi
mode=full
if [[ $QUICK == 1 ]]; then mode=QUICK; fi
say "workdir $W ($mode); data sets: $DATASETS; tools: $TOOLS; repeat $REPEAT; scale $SCALE"
setup
if [[ " $TOOLS" == *" pullback"* ]]; then build_pullback; fi
versions
for ds in $DATASETS; do "gen_$ds"; done
run_all
report | tee "$RES/report.md"
if grep -q 'MISMATCH$' "$TSV"; then
  say "some restores did not match their input (see $LOG/verify.log)"
  exit 3
fi
say "done: $RES/report.md"
