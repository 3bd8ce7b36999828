#!/usr/bin/env bash
# What can be checked of the image without Docker (which cannot run on the
# project's machines): the binary the Dockerfile builds is static, and runs
# as uid 65532 in a root that holds nothing but it and what distroless/static
# ships (/etc/passwd, nsswitch.conf, CA certificates, no libc): it prints its
# version, accepts the in-cluster config, resolves names through /etc/hosts
# and through DNS as a pod does, and delivers webhooks. Every server it
# talks to is on a loopback address.
#
#   bash deploy/check-static.sh        (as root, for chroot; a cold release
#                                       build takes 10 to 20 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

[ "$(id -u)" = 0 ] || fail "run as root: the run checks use chroot --userspec=65532:65532"

step "building as the Dockerfile does (deploy/build-static.sh)"
start=$(date +%s)
bin=$(sh deploy/build-static.sh)
echo "built $bin in $(( $(date +%s) - start ))s"

step "the binary is statically linked"
file "$bin"
file "$bin" | grep -Eq 'statically linked|static-pie linked' || fail "file(1) does not say static"
ldd_out=$(ldd "$bin" 2>&1 || true)
echo "ldd: $ldd_out"
echo "$ldd_out" | grep -Eq 'not a dynamic executable|statically linked' || fail "ldd lists shared libraries"

root=$(mktemp -d)
receiver_pid=
cleanup() {
    if [ -n "$receiver_pid" ]; then kill "$receiver_pid" 2>/dev/null || true; fi
    rm -rf "$root" "$root".port "$root".hits "$root".queries
}
trap cleanup EXIT

step "a root like distroless/static's, owned by root; only the state dir is writable by 65532"
chmod 755 "$root"   # mktemp makes it 0700
mkdir -p "$root"/etc/rollback-watchdog "$root"/usr/local/bin "$root"/var/lib/rollback-watchdog
cp "$bin" "$root"/usr/local/bin/rollback-watchdog
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root"/etc/passwd
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root"/etc/group
printf 'hosts: files dns\n' >"$root"/etc/nsswitch.conf
# distroless/static ships the CA bundle; the HTTP clients refuse to start
# without one.
mkdir -p "$root"/etc/ssl/certs
cp /etc/ssl/certs/ca-certificates.crt "$root"/etc/ssl/certs/ca-certificates.crt
printf '127.0.0.1 localhost hook.rollback-watchdog.test\n' >"$root"/etc/hosts
cp deploy/watchdog.toml "$root"/etc/rollback-watchdog/watchdog.toml
printf 'https://hooks.slack.com/services/T000/B000/XXXX\n' >"$root"/etc/rollback-watchdog/slack-url
chown 65532:65532 "$root"/var/lib/rollback-watchdog
find "$root" -mindepth 1 -maxdepth 3 | sed "s|^$root||" | sort

chroot=$(command -v chroot) || fail "chroot(8) is missing (Debian's coreutils)"
# Only the pod's own variables: nothing from this shell leaks in.
as_nonroot() {
    timeout 60 env -i POD_NAME=rollback-watchdog-0 POD_NAMESPACE=rollback-watchdog \
        "$chroot" --userspec=65532:65532 "$root" /usr/local/bin/rollback-watchdog "$@"
}

step "--version, as 65532"
as_nonroot --version

step "check-config --strict on deploy/watchdog.toml, where the pod reads it"
as_nonroot --config /etc/rollback-watchdog/watchdog.toml check-config --strict >/dev/null

step "name resolution as in a pod (/etc/hosts, and DNS through resolv.conf) and webhook delivery"
# A pod resolves in-cluster names (prometheus.monitoring.svc) through DNS:
# a resolver on a loopback address answers one name with 127.0.0.1, and a
# receiver there takes the webhook documents. Both stop by themselves.
resolver=127.0.0.153
printf 'nameserver %s\noptions timeout:2 attempts:2\n' "$resolver" >"$root"/etc/resolv.conf
port_file="$root.port" hits_file="$root.hits" queries_file="$root.queries"
python3 - "$port_file" "$hits_file" "$queries_file" "$resolver" <<'PY' &
import http.server, socket, struct, sys, threading, time
port_file, hits_file, queries_file, resolver = sys.argv[1:5]
DNS_NAME = "hook.rollback-watchdog.svc.cluster.local"

def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((resolver, 53))
    s.settimeout(1)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            data, peer = s.recvfrom(512)
        except socket.timeout:
            continue
        i, labels = 12, []
        while data[i]:
            labels.append(data[i + 1:i + 1 + data[i]].decode())
            i += data[i] + 1
        qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
        name = ".".join(labels)
        with open(queries_file, "a") as f:
            f.write(f"{name} {qtype}\n")
        answer = b""
        if name == DNS_NAME and qtype == 1:
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton("127.0.0.1")
        rcode = 0 if name == DNS_NAME else 3
        header = data[:2] + struct.pack(">HHHHH", 0x8180 | rcode, 1, 1 if answer else 0, 0, 0)
        s.sendto(header + data[12:i + 5] + answer, peer)

class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(hits_file, "ab") as f:
            f.write(self.headers.get("Host", "").encode() + b" " + body + b"\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass

threading.Thread(target=dns, daemon=True).start()
server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
server.timeout = 90
with open(port_file, "w") as f:
    f.write(str(server.server_address[1]))
for _ in range(2):
    server.handle_request()
PY
receiver_pid=$!
for _ in $(seq 50); do [ -s "$port_file" ] && break; sleep 0.1; done
[ -s "$port_file" ] || fail "the webhook receiver did not start"
port=$(cat "$port_file")
cat >"$root"/etc/rollback-watchdog/hook.toml <<TOML
[watchdog]
audit_log = "/var/lib/rollback-watchdog/audit.jsonl"

[[notify]]
kind = "webhook"
name = "via-etc-hosts"
url = "http://hook.rollback-watchdog.test:$port/"
timeout = "5s"
deadline = "20s"

[[notify]]
kind = "webhook"
name = "via-dns"
url = "http://hook.rollback-watchdog.svc.cluster.local:$port/"
timeout = "5s"
deadline = "20s"
TOML
as_nonroot --config /etc/rollback-watchdog/hook.toml notify-test
grep -q '^hook.rollback-watchdog.test:.*"schema"' "$hits_file" || fail "no webhook arrived through the /etc/hosts name"
grep -q '^hook.rollback-watchdog.svc.cluster.local:.*"schema"' "$hits_file" || fail "no webhook arrived through the DNS name"
grep -q '^hook.rollback-watchdog.svc.cluster.local 1$' "$queries_file" || fail "the DNS name was not asked of the resolver"
rm -f "$port_file" "$hits_file" "$queries_file"

echo "OK: $bin is static and runs as 65532 in an empty root"
