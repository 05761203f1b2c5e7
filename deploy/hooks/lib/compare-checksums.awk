# compare-checksums.awk: used by the postgres and mariadb verify/import hooks.
# awk -F '\t' -v db=NAME -f compare-checksums.awk EXPECTED_FILE - < ACTUAL
# Both inputs are lines "table<TAB>rows<TAB>checksum". Prints every difference and
# exits 1 when there is one; otherwise prints a one-line summary.
FILENAME == ARGV[1] { if ($0 != "") { want[$1] = $2 "\t" $3; order[++n] = $1 } next }
$0 != "" { got[$1] = $2 "\t" $3; if (!($1 in want)) order[++n] = $1 }
END {
  bad = 0; rows = 0
  for (i = 1; i <= n; i++) {
    t = order[i]
    if (!(t in got)) { printf "  %s: missing from %s\n", t, db; bad++; continue }
    if (!(t in want)) { split(got[t], g, "\t"); printf "  %s: in %s (%s rows) but not in the backup\n", t, db, g[1]; bad++; continue }
    split(want[t], w, "\t"); split(got[t], g, "\t")
    if (w[1] != g[1]) { printf "  %s: %s rows in the backup, %s in %s\n", t, w[1], g[1], db; bad++ }
    else if (w[2] != g[2]) { printf "  %s: same row count (%s) but different content (checksum %s in the backup, %s in %s)\n", t, w[1], w[2], g[2], db; bad++ }
    rows += g[1]
  }
  if (bad) { printf "%d table(s) differ\n", bad; exit 1 }
  printf "%d tables, %.0f rows, every count and checksum equal\n", n, rows
}
