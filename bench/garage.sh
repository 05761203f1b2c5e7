# bench/garage.sh — sourced by bench/bench.sh: a single-node Garage (S3) on loopback for
# the `pullback-s3` rows. Data and metadata fsynced, no compression by Garage (so the
# bucket's size is the archive's), sqlite metadata.
#   garage_start DIR   start it (once), create bucket + key; sets GARAGE_ENDPOINT
#   garage_stop
#   garage_pin CPUS    hold it to CPUS (taskset list)
#   garage_bytes PREFIX  total size of the objects under PREFIX/
#   garage_pbs_config FILE LOCAL PREFIX  a PBS config with the archive in the bucket

GARAGE_KEY_ID=GK0123456789abcdef01234567
GARAGE_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
GARAGE_BUCKET=pullback-bench
GARAGE_PID=

garage_bin() {
  if command -v garage >/dev/null 2>&1; then command -v garage
  elif [[ -x $HOME/.cargo/bin/garage ]]; then echo "$HOME/.cargo/bin/garage"
  else return 1; fi
}

garage_start() {
  local dir=$1 bin rpc=39011 s3=39012 admin=39013 i id
  [[ -n $GARAGE_PID ]] && return 0
  bin=$(garage_bin) || die "garage not found: run 'make test-deps' (cargo install garage --locked)"
  rm -rf "$dir"
  mkdir -p "$dir"
  cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
metadata_fsync = true
data_fsync = true
compression_level = "none"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$GARAGE_SECRET"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
  GARAGE=("$bin" -c "$dir/garage.toml")
  RUST_LOG=garage=warn "${GARAGE[@]}" server >"$LOG/garage.log" 2>&1 &
  GARAGE_PID=$!
  for ((i = 0; i < 300; i++)); do
    if id=$("${GARAGE[@]}" node id -q 2>/dev/null); then break; fi
    sleep 0.1
  done
  [[ -n ${id:-} ]] || die "garage did not start (see $LOG/garage.log)"
  {
    "${GARAGE[@]}" layout assign -z dc1 -c 10G "${id%%@*}"
    "${GARAGE[@]}" layout apply --version 1
    "${GARAGE[@]}" bucket create "$GARAGE_BUCKET"
    "${GARAGE[@]}" key import --yes -n bench "$GARAGE_KEY_ID" "$GARAGE_SECRET"
    "${GARAGE[@]}" bucket allow --read --write --owner "$GARAGE_BUCKET" --key "$GARAGE_KEY_ID"
  } >>"$LOG/garage.log" 2>&1 || die "garage setup failed (see $LOG/garage.log)"
  GARAGE_ENDPOINT=http://127.0.0.1:$s3
  say "garage $("${GARAGE[@]}" --version 2>/dev/null | head -n1) on $GARAGE_ENDPOINT"
}

garage_stop() {
  if [[ -n $GARAGE_PID ]]; then kill "$GARAGE_PID" 2>/dev/null || true; wait "$GARAGE_PID" 2>/dev/null || true; fi
  GARAGE_PID=
}

garage_bytes() {
  curl -sS -f -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" --aws-sigv4 "aws:amz:garage:s3" --user "$GARAGE_KEY_ID:$GARAGE_SECRET" \
    "$GARAGE_ENDPOINT/$GARAGE_BUCKET?list-type=2&max-keys=100000&prefix=$1%2F" |
    python3 -c 'import re, sys; t = sys.stdin.read(); print(sum(int(s) for s in re.findall(r"<Size>(\d+)</Size>", t)))'
}

garage_pbs_config() {
  cat >"$1" <<TOML
[archive]
path = "$2"
[archive.s3]
endpoint = "$GARAGE_ENDPOINT"
bucket = "$GARAGE_BUCKET"
prefix = "$3"
region = "garage"
access_key_id = "$GARAGE_KEY_ID"
secret_access_key = "$GARAGE_SECRET"
TOML
}

# garage_pin CPUS  hold the running Garage (all its threads) to CPUS (taskset list)
garage_pin() {
  taskset -a -p -c "$1" "$GARAGE_PID" >/dev/null
}
