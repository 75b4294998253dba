#!/usr/bin/env bash
# Bulk throughput, device -> vendor: `cat` of a file through Postern (recording on) against direct
# OpenSSH to the same sshd, measured in the same run on this machine. Loopback only.
#
#   bash benches/throughput.sh [SIZE_MIB]      (default 256; CI smoke: 8)
#
# Prints MiB/s for each path, Postern's ratio to direct OpenSSH, and the recording's size on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-256}
cargo build --release -q -p broker
POSTERN=$PWD/target/release/postern
W=$(mktemp -d)
cleanup() { kill "${SERVE_PID:-}" "${SSHD_PID:-}" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

# The device: a real sshd on loopback trusting the broker's device key.
mkdir -p /run/sshd 2>/dev/null || true
ssh-keygen -q -t ed25519 -N '' -f "$W/host" -C device
ssh-keygen -q -t ed25519 -N '' -f "$W/devkey" -C broker
cp "$W/devkey.pub" "$W/authorized_keys"
SSHD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/sshd_config" <<CFG
ListenAddress 127.0.0.1:$SSHD_PORT
HostKey $W/host
AuthorizedKeysFile $W/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin yes
LogLevel ERROR
CFG
/usr/sbin/sshd -D -e -f "$W/sshd_config" 2>/dev/null & SSHD_PID=$!
USER_NAME=$(id -un)

# Postern in front of it.
D=$W/data
$POSTERN init --data "$D" >/dev/null
$POSTERN site add bench --data "$D" >/dev/null
$POSTERN device add bench/dev --addr "127.0.0.1:$SSHD_PORT" --login "$USER_NAME" --key "$W/devkey" --host-key "$W/host.pub" --data "$D" >/dev/null
$POSTERN function add bulk --allow shell,exec --data "$D" >/dev/null
$POSTERN serve --ssh 127.0.0.1:0 --web off --data "$D" > "$W/serve.out" 2>/dev/null & SERVE_PID=$!
for _ in $(seq 1 100); do grep -q "listening" "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
BROKER_PORT=$(sed -n 's/.*listening for vendors on 127.0.0.1:\([0-9]*\).*/\1/p' "$W/serve.out")
echo "[127.0.0.1]:$BROKER_PORT $(cat "$D/keys/host_ed25519.pub")" > "$W/known_hosts"
echo "[127.0.0.1]:$SSHD_PORT $(cat "$W/host.pub")" >> "$W/known_hosts"

# Test data on the "device": incompressible (worst case for the recording) and text.
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/random.bin"
{ yes "drwxr-xr-x  2 root root 4096 Nov 25 07:12 lib" || true; } | head -c $((SIZE_MIB << 20)) > "$W/text.txt"

totp() { python3 - "$1" <<'PY'
import base64, hashlib, hmac, struct, sys, time
key = base64.b32decode(sys.argv[1] + "=" * (-len(sys.argv[1]) % 8))
h = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7fffffff) % 1000000))
PY
}

# One vendor per run: each TOTP code works once.
N=0
vendor() {
  N=$((N + 1)); local v="bench$N"
  local uri; uri=$($POSTERN vendor add "$v" --org bench --json --data "$D" | python3 -c 'import json,sys; print(json.load(sys.stdin)["otpauth"])')
  SECRET=$(python3 -c 'import sys, urllib.parse as u; print(u.parse_qs(u.urlparse(sys.argv[1]).query)["secret"][0])' "$uri")
  ssh-keygen -q -t ed25519 -N '' -f "$W/$v" -C "$v"
  $POSTERN vendor cert "$v" --pubkey "$W/$v.pub" --data "$D" >/dev/null
  $POSTERN grant add --vendor "$v" --site bench --function bulk --until +1h --data "$D" >/dev/null
  VENDOR=$v
}

SSH_OPTS=(-F /dev/null -o IdentitiesOnly=yes -o UserKnownHostsFile="$W/known_hosts" -o StrictHostKeyChecking=yes -c aes256-gcm@openssh.com)
mibs() { python3 -c "print(f'{$SIZE_MIB / $1:.0f}')"; }
now() { python3 -c 'import time; print(time.time())'; }

# Each run sets ELAPSED (seconds); no subshells, so the vendor counter advances.
run_direct() { # $1 file
  local t0; t0=$(now)
  ssh "${SSH_OPTS[@]}" -i "$W/devkey" -p "$SSHD_PORT" "$USER_NAME@127.0.0.1" "cat $1" > /dev/null
  ELAPSED=$(python3 -c "print($(now) - $t0)")
}
run_postern() { # $1 file
  vendor
  totp "$SECRET" > "$W/code"; printf '#!/bin/sh\ncat %s\n' "$W/code" > "$W/askpass"; chmod +x "$W/askpass"
  local t0; t0=$(now)
  SSH_ASKPASS="$W/askpass" SSH_ASKPASS_REQUIRE=force ssh "${SSH_OPTS[@]}" -i "$W/$VENDOR" -p "$BROKER_PORT" "$VENDOR:bench/dev@127.0.0.1" "cat $1" > /dev/null < /dev/null
  ELAPSED=$(python3 -c "print($(now) - $t0)")
}

printf '%-8s %-22s %10s %10s\n' data path "MiB/s" "vs direct"
for kind in random.bin text.txt; do
  run_direct "$W/$kind"; d=$ELAPSED
  run_postern "$W/$kind"; p=$ELAPSED
  ratio=$(python3 -c "print(f'{$d / $p:.2f}')")
  printf '%-8s %-22s %10s %10s\n' "${kind%%.*}" "direct OpenSSH" "$(mibs "$d")" "1.00"
  printf '%-8s %-22s %10s %10s\n' "${kind%%.*}" "Postern (recording)" "$(mibs "$p")" "$ratio"
done
sleep 1
echo "recordings on disk (one per Postern run, in order):"
ls -ltr "$D/recordings" | awk 'NR>1 {printf "  %s  %.1f MiB\n", $9, $5/1048576}'
