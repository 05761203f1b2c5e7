# Sourced by pipeline.sh and fanout.sh after setting NAME: the work folder W (from $1),
# the repository root ROOT, the pgtext dumps in D (made by bench.sh), `say`, and the
# release binaries in BIN (built unless BIN is set).
W=$(realpath -m "${1:?usage: $0 WORKDIR}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
D=$W/data
say() { printf '[%s %(%H:%M:%S)T] %s\n' "$NAME" -1 "$*" >&2; }
for v in 1 2; do
  [[ -s $D/pgtext_v$v/dump.sql ]] || { say "no $D/pgtext_v$v/dump.sql: run bench.sh $W first (DATASETS=pgtext)"; exit 1; }
done
if [[ -z ${BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release -q -p pbs -p exporter -p importer)
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
