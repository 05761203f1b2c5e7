#!/usr/bin/env bash
# make demo: the archive on an embedded default, in a temporary folder.
# Ingests a sample directory, changes it, ingests again, lists both
# generations, restores the second and shows that it equals the source.
# (The full exporter -> PBS -> clone cycle replaces this once the pipeline lands.)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PULLBACK_BIN_DIR:-$ROOT/target/debug}
PBS=$BIN/pbs
W=$(mktemp -d /tmp/pullback-demo.XXXXXX)
trap 'rm -rf "$W"' EXIT
say() { printf '\n== %s\n' "$*"; }

say "sample directory $W/src"
mkdir -p "$W/src/docs" "$W/src/data"
cp -r /usr/share/doc/bash /usr/share/doc/zstd "$W/src/docs/" 2>/dev/null || true
python3 - "$W/src/data/table.csv" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(200000):
        f.write(f"{i},{(i * 2654435761) % 1000003},account-{i:08d},{'x' * (i % 17)}\n")
PY
ln -s data/table.csv "$W/src/latest.csv"
mkdir -p "$W/src/empty-dir"; : > "$W/src/empty-file"
du -sh "$W/src"

say "first generation"
"$PBS" archive init --archive "$W/archive"
"$PBS" archive ingest --archive "$W/archive" --source demo "$W/src"

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

say "second generation (only the change is stored)"
"$PBS" archive ingest --archive "$W/archive" --source demo "$W/src"

say "generations"
"$PBS" archive list --archive "$W/archive"

say "restore the second generation and compare it with the source"
"$PBS" archive restore --archive "$W/archive" demo/latest --to "$W/restored"
diff -r --no-dereference "$W/src" "$W/restored"
echo "restored tree equals the source"

say "full verify"
"$PBS" archive verify --full --archive "$W/archive"
