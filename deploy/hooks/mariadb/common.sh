# Shared by the mariadb hooks (sourced, not run). bash.
#
# Connection (every hook):
#   PULLBACK_MARIADB_HOST      server host                     (client default: local socket)
#   PULLBACK_MARIADB_PORT      server port                     (client default, 3306)
#   PULLBACK_MARIADB_SOCKET    server socket file
#   PULLBACK_MARIADB_USER      user to connect as; on the main it needs SELECT, SHOW VIEW,
#                              TRIGGER and RELOAD (for BACKUP STAGE) on *.* (demote: also
#                              READ_ONLY ADMIN, CONNECTION ADMIN); on the clone ALL on *.*
#                              (it creates schemas, recreates objects with their DEFINER and
#                              writes while read_only is on)
#   PULLBACK_MARIADB_PASSWORD  its password (handed to the clients in a private option
#                              file, never on a command line)
#   PULLBACK_MARIADB_DEFAULTS_FILE  an option file read first (e.g. /etc/pullback/my.cnf
#                              with a [client] section holding user and password); the
#                              variables above override it
#   PULLBACK_MARIADB_BINDIR    folder holding mariadb and mariadb-dump (default: PATH)
# Databases (schemas):
#   PULLBACK_MARIADB_DATABASE        the schema this node serves: exported on the main
#   PULLBACK_MARIADB_CLONE_DATABASE  the schema the clone restores into and verifies
#                                    (default: PULLBACK_MARIADB_DATABASE)

# Shared pieces of the reference hooks (deploy/hooks/lib).
PULLBACK_HOOKS_LIB=$(dirname "$(dirname "$(readlink -f "$0")")")/lib

set -euo pipefail

mdb_die() {
  echo "mariadb ${PB_HOOK:-hook}: $*" >&2
  exit 1
}

# Writes the private option file and sets MARIADB, MARIADB_DUMP, MDB_TMP.
# The caller removes MDB_TMP (mdb_cleanup) in its EXIT trap.
# shellcheck disable=SC2034
mdb_setup() {
  local dir=${PULLBACK_MARIADB_BINDIR:-}
  MARIADB=${dir:+$dir/}mariadb
  MARIADB_DUMP=${dir:+$dir/}mariadb-dump
  MDB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/pullback-mariadb.XXXXXX")
  MDB_CNF=$MDB_TMP/client.cnf
  local q='"'
  (
    umask 077
    {
      if [ -n "${PULLBACK_MARIADB_DEFAULTS_FILE:-}" ]; then
        [ -r "$PULLBACK_MARIADB_DEFAULTS_FILE" ] || mdb_die "cannot read $PULLBACK_MARIADB_DEFAULTS_FILE"
        echo "!include $PULLBACK_MARIADB_DEFAULTS_FILE"
      fi
      echo "[client]"
      echo "default-character-set=utf8mb4"
      [ -z "${PULLBACK_MARIADB_HOST:-}" ] || echo "host=$PULLBACK_MARIADB_HOST"
      [ -z "${PULLBACK_MARIADB_PORT:-}" ] || echo "port=$PULLBACK_MARIADB_PORT"
      [ -z "${PULLBACK_MARIADB_SOCKET:-}" ] || echo "socket=$PULLBACK_MARIADB_SOCKET"
      [ -z "${PULLBACK_MARIADB_USER:-}" ] || echo "user=$PULLBACK_MARIADB_USER"
      if [ -n "${PULLBACK_MARIADB_PASSWORD+set}" ]; then
        local p=${PULLBACK_MARIADB_PASSWORD//\\/\\\\}
        echo "password=$q${p//$q/\\$q}$q"
      fi
    } >"$MDB_CNF"
  )
}

mdb_cleanup() {
  [ -z "${MDB_TMP:-}" ] || rm -rf "$MDB_TMP"
}

# mdb_sql SCHEMA [ARGS...]: batch mode, no column names, stop on the first
# error; SCHEMA "" for none.
mdb_sql() {
  local db=$1
  shift
  "$MARIADB" --defaults-extra-file="$MDB_CNF" --batch --skip-column-names "$@" ${db:+"--database=$db"}
}

mdb_clone_db() {
  local c=${PULLBACK_MARIADB_CLONE_DATABASE:-${PULLBACK_MARIADB_DATABASE:-}}
  [ -n "$c" ] || mdb_die "set PULLBACK_MARIADB_CLONE_DATABASE (or PULLBACK_MARIADB_DATABASE) to the clone's schema"
  printf '%s' "$c"
}

# Backquote an identifier.
mdb_ident() {
  local b='`'
  printf '%s%s%s' "$b" "${1//$b/$b$b}" "$b"
}

# Run in a schema, prints one checksum query per table (base tables, system
# versioned tables), sorted by name. Each query prints:
#   table <TAB> row count <TAB> checksum
# The checksum is the sum over the rows of the two 64-bit halves of the MD5 of
# the row (every column through QUOTE(), so NULL and 'NULL' differ): it does
# not depend on the order rows are read in.
MDB_CHECKSUM_GEN_SQL=$(
  cat <<'SQL'
SET SESSION group_concat_max_len = 16777216;
SELECT CONCAT('SELECT ', QUOTE(t.TABLE_NAME), ', COUNT(*), CONCAT(',
  'COALESCE(SUM(CAST(CONV(SUBSTRING(h, 1, 16), 16, 10) AS UNSIGNED)), 0), '':'', ',
  'COALESCE(SUM(CAST(CONV(SUBSTRING(h, 17, 16), 16, 10) AS UNSIGNED)), 0)) ',
  'FROM (SELECT MD5(CONCAT_WS(''|'', ',
  GROUP_CONCAT(CONCAT('QUOTE(`', REPLACE(c.COLUMN_NAME, '`', '``'), '`)')
               ORDER BY c.ORDINAL_POSITION SEPARATOR ', '),
  ')) AS h FROM `', REPLACE(t.TABLE_NAME, '`', '``'), '`) AS s;')
FROM information_schema.TABLES t
JOIN information_schema.COLUMNS c
  ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME
WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')
GROUP BY t.TABLE_NAME
ORDER BY t.TABLE_NAME;
SQL
)

# Views, triggers and routines of the current schema, one per line, sorted.
MDB_OBJECTS_SQL=$(
  cat <<'SQL'
SELECT 'VIEW', TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()
UNION ALL
SELECT 'TRIGGER', TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()
UNION ALL
SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()
ORDER BY 1, 2;
SQL
)

# mdb_checksums SCHEMA: the checksum lines of SCHEMA, in one consistent snapshot.
mdb_checksums() {
  local db=$1 stmts
  stmts=$(mdb_sql "$db" <<<"$MDB_CHECKSUM_GEN_SQL") || return 1
  {
    echo "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;"
    echo "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;"
    printf '%s\n' "$stmts"
    echo "COMMIT;"
  } | mdb_sql "$db" | LC_ALL=C sort
}

# mdb_compare EXPECTED_FILE SCHEMA: compare SCHEMA's checksums with those
# recorded at export; print every difference and fail when there is one.
mdb_compare() {
  local expected=$1 db=$2 actual
  actual=$(mdb_checksums "$db") || mdb_die "cannot compute the checksums of schema $db"
  printf '%s\n' "$actual" |
    awk -F '\t' -v db="$db" -f "$PULLBACK_HOOKS_LIB/compare-checksums.awk" "$expected" -
}

# mdb_compare_objects EXPECTED_FILE SCHEMA: same views, triggers and routines.
mdb_compare_objects() {
  local got
  got=$(mdb_sql "$2" <<<"$MDB_OBJECTS_SQL" | LC_ALL=C sort) || mdb_die "cannot list the objects of schema $2"
  if ! diff <(LC_ALL=C sort "$1") <(printf '%s\n' "$got" | sed '/^$/d') >"$MDB_TMP/objects.diff"; then
    echo "  views, triggers or routines differ (< in the backup, > in $2):"
    sed -n 's/^[<>]/  &/p' "$MDB_TMP/objects.diff"
    return 1
  fi
}
