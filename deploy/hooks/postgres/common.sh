# Shared by the postgres hooks (sourced, not run). bash.
#
# Connection (every hook; each also honours the usual libpq variables such as
# PGPASSWORD, PGPASSFILE, PGSSLMODE, PGHOST...):
#   PULLBACK_PG_HOST            server host or socket folder      (libpq default)
#   PULLBACK_PG_PORT            server port                       (libpq default, 5432)
#   PULLBACK_PG_USER            role to connect as; needs to read every table on the
#                               main, and CREATEDB + ownership of the clone database
#                               (or superuser) on the clone   (libpq default)
#   PULLBACK_PG_ADMIN_DATABASE  database to connect to for CREATE/DROP/ALTER DATABASE
#                               (default postgres)
#   PULLBACK_PG_BINDIR          folder holding psql, pg_dump, pg_restore (default: PATH);
#                               e.g. /usr/lib/postgresql/16/bin to match the server
# Databases:
#   PULLBACK_PG_DATABASE        the database this node serves: the one exported on the
#                               main, and the one demote makes read-only
#   PULLBACK_PG_CLONE_DATABASE  the database the clone restores into, verifies and
#                               promote makes writable (default: PULLBACK_PG_DATABASE)

# Shared pieces of the reference hooks (deploy/hooks/lib).
PULLBACK_HOOKS_LIB=$(dirname "$(dirname "$(readlink -f "$0")")")/lib

set -euo pipefail

pg_die() {
  echo "postgres ${PB_HOOK:-hook}: $*" >&2
  exit 1
}

# Sets PSQL, PG_DUMP, PG_RESTORE and PG_ADMIN_DB for the hooks.
# shellcheck disable=SC2034
pg_setup() {
  [ -z "${PULLBACK_PG_HOST:-}" ] || export PGHOST=$PULLBACK_PG_HOST
  [ -z "${PULLBACK_PG_PORT:-}" ] || export PGPORT=$PULLBACK_PG_PORT
  [ -z "${PULLBACK_PG_USER:-}" ] || export PGUSER=$PULLBACK_PG_USER
  PG_ADMIN_DB=${PULLBACK_PG_ADMIN_DATABASE:-postgres}
  local dir=${PULLBACK_PG_BINDIR:-}
  PSQL=${dir:+$dir/}psql
  PG_DUMP=${dir:+$dir/}pg_dump
  PG_RESTORE=${dir:+$dir/}pg_restore
  export PGAPPNAME="pullback-${PB_HOOK:-hook}"
  export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
  export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
}

# psql DATABASE [ARGS...]: quiet, unaligned, tab-separated, stop on the first
# error, never prompt for a password (-w: a hook has no terminal).
pg_psql() {
  local db=$1
  shift
  "$PSQL" -X -q -A -t -w -F "$(printf '\t')" -v ON_ERROR_STOP=1 --dbname="$db" "$@"
}

pg_clone_db() {
  local c=${PULLBACK_PG_CLONE_DATABASE:-${PULLBACK_PG_DATABASE:-}}
  [ -n "$c" ] || pg_die "set PULLBACK_PG_CLONE_DATABASE (or PULLBACK_PG_DATABASE) to the clone's database"
  printf '%s' "$c"
}

# The per-table checksum queries, run with \gexec inside a transaction that
# already has its snapshot. One output line per ordinary table, sorted:
#   schema.table <TAB> row count <TAB> checksum
# The checksum is the sum, over the rows, of the two 64-bit halves of the MD5
# of the row's text form: independent of the physical row order, so a
# restored copy gives the same value exactly when it holds the same rows.
# Tables that belong to extensions are left out (pg_dump leaves them out too).
PG_CHECKSUM_SQL=$(
  cat <<'SQL'
SELECT format(
  'SELECT %L, count(*), coalesce(sum((''x'' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)'
  ' || '':'' || coalesce(sum((''x'' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)'
  ' FROM (SELECT md5(ROW(r.*)::text) AS h FROM ONLY %I.%I AS r) AS s',
  n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
\gexec
SQL
)

# pg_checksums DATABASE: the checksum lines of DATABASE, in one snapshot, sorted.
pg_checksums() {
  {
    echo "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
    printf '%s\n' "$PG_CHECKSUM_SQL"
    echo "COMMIT;"
  } | pg_psql "$1" | LC_ALL=C sort
}

# pg_compare EXPECTED_FILE DATABASE: compare DATABASE's checksums with those
# recorded at export; print every difference and fail when there is one.
pg_compare() {
  local expected=$1 db=$2 actual
  actual=$(pg_checksums "$db") || pg_die "cannot compute the checksums of database $db"
  printf '%s\n' "$actual" |
    awk -F '\t' -v db="$db" -f "$PULLBACK_HOOKS_LIB/compare-checksums.awk" "$expected" -
}
