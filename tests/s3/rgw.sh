#!/usr/bin/env bash
# A single-node Ceph cluster serving S3 on 127.0.0.1, for the object-store tests: one monitor,
# one memstore OSD and radosgw (beast), with cephx off. Only the daemons this script started are
# stopped, by the pids it recorded.
#   tests/s3/rgw.sh start DIR   starts the cluster in DIR (new or empty); prints nothing on
#                               success; DIR/env then holds the endpoint and the test user's keys
#                               (AWS_ENDPOINT_URL=..., AWS_ACCESS_KEY_ID=..., ...) and the
#                               bucket meshckpt-test exists; MESHCKPT_RGW_TLS_ENDPOINT (https) and
#                               MESHCKPT_RGW_CA (its self-signed certificate, for 127.0.0.1 only)
#   tests/s3/rgw.sh stop DIR    stops the daemons started in DIR and removes its data
# MESHCKPT_RGW_MEMSTORE_BYTES sizes the OSD (in memory; 3 GiB by default).
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?directory}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stop() {
  [[ -f "$dir/pids" ]] || return 0
  # The reverse order of starting: the gateway, the OSD, then the monitor.
  for pid in $(tac "$dir/pids"); do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $(tac "$dir/pids"); do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$dir/pids"
}

if [[ $cmd == stop ]]; then
  stop
  rm -rf "$dir/mon" "$dir/osd"
  exit 0
fi
[[ $cmd == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

for bin in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool; do
  command -v "$bin" >/dev/null || { echo "rgw.sh: $bin is missing (Debian packages ceph-mon ceph-osd radosgw ceph-common)" >&2; exit 1; }
done

stop
rm -rf "$dir" && mkdir -p "$dir"/{run,log,mon,osd}
dir=$(cd "$dir" && pwd)
trap 'echo "rgw.sh: start failed; logs in $dir/log" >&2; stop' ERR

fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
mon_port=$(free_port)
rgw_port=$(free_port)
tls_port=$(free_port)
# A TLS endpoint too, with a self-signed certificate for 127.0.0.1 only (its SAN: the IP, no
# name), so a test can check both the chain and the name.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$dir/tls.key" -out "$dir/tls.crt" >"$dir/log/openssl.out" 2>&1
conf=$dir/ceph.conf
cat > "$conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
osd objectstore = memstore
memstore device bytes = ${MESHCKPT_RGW_MEMSTORE_BYTES:-3221225472}
osd class update on start = false
osd crush update on start = false
osd memory target = 939524096
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
mon data = $dir/mon/\$id
osd data = $dir/osd/\$id
keyring = /dev/null
rgw frontends = beast endpoint=127.0.0.1:$rgw_port ssl_endpoint=127.0.0.1:$tls_port ssl_certificate=$dir/tls.crt ssl_private_key=$dir/tls.key
rgw dns name = 127.0.0.1
rgw enable usage log = false
# Deleted objects' data is garbage-collected by RGW, after two hours by default: in a memstore
# OSD that fills the memory. Collect at once.
rgw gc obj min wait = 0
rgw gc processor period = 5
rgw gc processor max time = 5
mon data avail warn = 1
CONF

monmaptool --create --addv a "[v2:127.0.0.1:$mon_port]" --fsid "$fsid" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" >"$dir/log/mkfs-mon.out" 2>&1
setsid ceph-mon -c "$conf" -i a -f >"$dir/log/mon.out" 2>&1 </dev/null &
echo $! >> "$dir/pids"

ceph=(ceph -c "$conf" --connect-timeout 30)
"${ceph[@]}" -s >/dev/null
osd_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
osd_id=$("${ceph[@]}" osd new "$osd_uuid")
mkdir -p "$dir/osd/$osd_id"
ceph-osd -c "$conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" >"$dir/log/mkfs-osd.out" 2>&1
setsid ceph-osd -c "$conf" -i "$osd_id" -f >"$dir/log/osd.out" 2>&1 </dev/null &
echo $! >> "$dir/pids"
"${ceph[@]}" osd crush add-bucket localhost host >/dev/null 2>&1
"${ceph[@]}" osd crush move localhost root=default >/dev/null 2>&1
"${ceph[@]}" osd crush add "osd.$osd_id" 1.0 host=localhost >/dev/null 2>&1

# The OSD is up and in before the gateway creates its pools.
for i in $(seq 120); do
  "${ceph[@]}" osd dump 2>/dev/null | grep -q "^osd.$osd_id up *in" && break
  [[ $i -lt 120 ]] || { echo "rgw.sh: osd.$osd_id is not up after 60 s" >&2; false; }
  sleep 0.5
done

setsid radosgw -c "$conf" -n client.rgw -f >"$dir/log/rgw.out" 2>&1 </dev/null &
echo $! >> "$dir/pids"
rgw_pid=$!
for i in $(seq 240); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1',$rgw_port),1)" 2>/dev/null && break
  kill -0 $rgw_pid 2>/dev/null || { echo "rgw.sh: radosgw exited" >&2; false; }
  [[ $i -lt 240 ]] || { echo "rgw.sh: radosgw does not listen on 127.0.0.1:$rgw_port after 120 s" >&2; false; }
  sleep 0.5
done

access=meshckpttestkey
secret=meshckpttestsecret0123456789
radosgw-admin -c "$conf" -n client.admin user create --uid=meshckpt --display-name=meshckpt \
  --access-key=$access --secret-key=$secret >/dev/null 2>"$dir/log/user.out"
# The test bucket, made with Debian's awscli (meshckpt creates no buckets).
aws=/usr/bin/aws
[[ -x $aws ]] || aws=aws
AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  "$aws" --endpoint-url "http://127.0.0.1:$rgw_port" s3 mb s3://meshckpt-test >"$dir/log/mb.out" 2>&1
cat > "$dir/env" <<ENV
AWS_ENDPOINT_URL=http://127.0.0.1:$rgw_port
AWS_ACCESS_KEY_ID=$access
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=us-east-1
MESHCKPT_RGW_TLS_ENDPOINT=https://127.0.0.1:$tls_port
MESHCKPT_RGW_CA=$dir/tls.crt
ENV
trap - ERR
