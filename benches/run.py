#!/usr/bin/env python3
"""Postern against OpenSSH, measured in the same run on this machine (loopback only).

    python3 benches/run.py            # full run (256 MiB transfers, 40 setups, 200 keystrokes, 100 sessions)
    python3 benches/run.py --quick    # smoke: tiny sizes, a few seconds of measuring
    python3 benches/run.py --quick --debug   # a check of the harness itself, on the debug build
    python3 benches/run.py --soak --minutes 30 --sessions 500   # soak: broker RSS over time

Stands up a real sshd as the device, a second plain sshd as a ProxyJump host (no recording), and
`postern serve` (release build, recording on) in front of the device, then measures:

  1. bulk throughput, device->vendor (`cat FILE`) and vendor->device (`cat > /dev/null`):
     direct OpenSSH, OpenSSH ProxyJump, Postern; MiB/s and Postern's ratio to both;
  2. session setup: start of `ssh` to the end of `ssh HOST true` (TCP, key exchange, auth with
     certificate and TOTP answered by a script, exec), direct vs Postern, p50/p99;
  3. keystroke echo in an interactive shell (pty), direct vs Postern, p50/p99;
  4. N idle interactive sessions at once: broker RSS per session and setups per second, against
     sshd accepting the same sessions directly;
  1b. recording overhead: table 1's Postern transfers again through a second broker built with the
     benchmark-only feature `bench-unrecorded` (skipped with --quick or --no-unrecorded).

With --soak, only this runs instead: `--sessions` interactive sessions opened in-process by
`postern bench-load` to a scripted simulated device, each typing a command every `--every` seconds
for `--minutes`, while the broker's RSS, threads and open files are sampled every `--sample`
seconds; a table, the RSS slope over each half, and a CSV under the target dir.

The policy decision benchmark is `cargo bench -p approvals --bench decision`. Results and how to
read them: BENCHMARKS.md. Every loop is bounded in count and time.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import platform
import pty
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where cargo puts the binaries (honours CARGO_TARGET_DIR, as cargo does).
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Relay:
    """A TCP relay on loopback that can be cut (connections closed, new ones refused) and restored."""

    def __init__(self, to_port):
        self.to = to_port
        self.cut = False
        self.conns = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            c, _ = self.sock.accept()
            if self.cut:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.to))
            except OSError:
                c.close()
                continue
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def sever(self):
        self.cut = True
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns = []

    def restore(self):
        self.cut = False


def totp(secret, t=None):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    step = int(t if t is not None else time.time()) // 30
    h = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    o = h[-1] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def without_keys(cfg, *keys):
    """The TOML text `cfg` without the top-level lines that set any of `keys`."""
    return "\n".join(l for l in cfg.splitlines() if l.split("=", 1)[0].strip() not in keys)


def cpu_seconds(pid):
    """User and system CPU time of a process so far (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_sample(pid):
    """(RSS KiB, threads, open fds) of a process."""
    rss, threads = 0, 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads, len(os.listdir(f"/proc/{pid}/fd"))


def slope(points):
    """Least-squares slope of (x, y) points (0 with fewer than two)."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


class Bench:
    def __init__(self, args):
        self.args = args
        self.w = tempfile.mkdtemp(prefix="postern-bench-")
        self.procs = []
        self.user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        self.postern = os.path.join(TARGET, "debug" if args.debug else "release", "postern")
        self.build = True
        # The load generator (`bench-load`): this build's, also when measuring a baseline broker.
        self.load_gen = self.postern
        self.n_vendor = 0
        self.edge_port = free_port()

    def path(self, *p):
        return os.path.join(self.w, *p)

    def run(self, *cmd, **kw):
        r = subprocess.run(cmd, capture_output=True, text=True, **kw)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}: {r.stderr.strip()}")
        return r.stdout

    def pn(self, *args):
        return self.run(self.postern, *args, "--data", self.path("data"))

    def sshd(self, name):
        port = free_port()
        cfg = self.path(f"{name}.conf")
        with open(cfg, "w") as f:
            f.write(
                f"ListenAddress 127.0.0.1:{port}\nHostKey {self.path('host')}\n"
                f"AuthorizedKeysFile {self.path('authorized_keys')}\nPidFile none\nUsePAM no\n"
                "StrictModes no\nPermitRootLogin yes\nAllowTcpForwarding yes\nLogLevel ERROR\n"
                "MaxStartups 2000:30:4000\nMaxSessions 100\n"
            )
        p = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", cfg],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(port)
        return port

    def start_broker(self, binary, name, config=()):
        """`postern serve` from `binary`; returns (process, SSH port)."""
        out = open(self.path(f"{name}.out"), "w")
        # BENCH_BROKER_WRAPPER (e.g. "valgrind --tool=massif") runs the broker under a profiler.
        wrapper = os.environ.get("BENCH_BROKER_WRAPPER", "").split() if name == "serve" else []
        edge = f"127.0.0.1:{self.edge_port}" if name == "serve" else "off"
        p = subprocess.Popen([*wrapper, binary, "serve", "--ssh", "127.0.0.1:0", "--web", "off",
                              "--edge", edge, "--data", self.path("data"), *config],
                             stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        end = time.time() + 60
        while time.time() < end:
            for line in open(self.path(f"{name}.out")):
                if line.startswith("postern: listening for vendors on "):
                    return p, int(line.rsplit(":", 1)[1])
            time.sleep(0.05)
        raise SystemExit(f"{binary} serve did not start: {open(self.path(f'{name}.out')).read()[-800:]}")

    def setup(self):
        profile = [] if self.args.debug else ["--release"]
        if self.build:
            print(f"building postern ({'debug' if self.args.debug else 'release'})...", file=sys.stderr)
            subprocess.run(["cargo", "build", *profile, "-q", "-p", "broker"], cwd=ROOT, check=True)
        os.makedirs("/run/sshd", exist_ok=True)
        for k in ["host", "devkey"]:
            self.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.path(k), "-C", k)
        shutil.copy(self.path("devkey.pub"), self.path("authorized_keys"))
        self.device_port = self.sshd("device")
        self.jump_port = self.sshd("jump")
        self.run(self.postern, "init", "--data", self.path("data"))
        # The operator's root key, outside the data dir, certifies the seal key: serve needs it.
        self.pn("keys", "root", "init", "--out", self.path("root.key"))
        self.pn("keys", "certify", "--root", self.path("root.key"))
        # Every benchmark client connects from 127.0.0.1: exempt it from the per-source caps and
        # penalties meant for strangers (as a NAT gateway many vendors share would be).
        cfg_path = self.path("data", "postern.toml")
        cfg = open(cfg_path).read().replace('penalty_exempt = []', 'penalty_exempt = ["127.0.0.1"]')
        # The device web front door, for table 11.
        self.web_port = free_port()
        # No metrics endpoint: two brokers of a side-by-side run would both want its port.
        cfg = without_keys(cfg, "web_devices_listen", "web_devices_domain", "metrics_listen")
        cfg += '\nmetrics_listen = "off"\n'
        cfg += f'\nweb_devices_listen = "127.0.0.1:{self.web_port}"\nweb_devices_domain = "devices.bench"\n'
        with open(cfg_path, "w") as f:
            f.write(cfg)
        self.pn("site", "add", "bench")
        self.pn("device", "add", "bench/dev", "--addr", f"127.0.0.1:{self.device_port}",
                "--login", self.user, "--key", self.path("devkey"), "--host-key", self.path("host.pub"))
        self.pn("function", "add", "bulk", "--allow", "shell,exec")
        self.broker, self.broker_port = self.start_broker(self.postern, "serve")
        if self.args.unrecorded:
            # A second broker on the same data, built to skip recording: what recording costs.
            tdir = os.path.join(TARGET, "bench-unrecorded")
            print("building postern without recording (benchmark-only feature)...", file=sys.stderr)
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "broker", "--features",
                            "bench-unrecorded", "--target-dir", tdir], cwd=ROOT, check=True)
            cfg = open(self.path("data", "postern.toml")).read()
            # Its own node name: live sessions are tracked per node; no device web front door
            # (the measured broker has it, on its own port).
            cfg = without_keys(cfg, "node", "web_devices_listen", "web_devices_domain")
            with open(self.path("unrecorded.toml"), "w") as f:
                f.write('node = "bench-unrecorded"\n' + cfg + "\n")
            self.unrecorded, self.unrecorded_port = self.start_broker(
                os.path.join(tdir, "release", "postern"), "unrecorded",
                ["--config", self.path("unrecorded.toml")])
        host = open(self.path("host.pub")).read().split()[:2]
        broker_host = open(self.path("data", "keys", "host_ed25519.pub")).read().split()[:2]
        with open(self.path("known_hosts"), "w") as f:
            ports = [(self.device_port, host), (self.jump_port, host), (self.broker_port, broker_host)]
            if self.args.unrecorded:
                ports.append((self.unrecorded_port, broker_host))
            for port, key in ports:
                f.write(f"[127.0.0.1]:{port} {' '.join(key)}\n")
        self.opts = ["-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={self.path('known_hosts')}",
                     "-o", "StrictHostKeyChecking=yes", "-o", "ControlMaster=no", "-c", "aes256-gcm@openssh.com"]
        with open(self.path("askpass"), "w") as f:
            f.write('#!/bin/sh\ncat "$BENCH_CODE_FILE"\n')
        os.chmod(self.path("askpass"), 0o755)

    def vendor(self):
        """A fresh vendor with a certificate and a grant: each TOTP code works once per vendor."""
        self.n_vendor += 1
        v = f"bench{self.n_vendor}"
        uri = json.loads(self.pn("vendor", "add", v, "--org", "bench", "--json"))["otpauth"]
        secret = uri.split("secret=")[1].split("&")[0]
        self.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.path(v), "-C", v)
        self.pn("vendor", "cert", v, "--pubkey", self.path(v + ".pub"))
        for site in ["bench", "bench-e"] if getattr(self, "edge_site", False) else ["bench"]:
            self.pn("grant", "add", "--vendor", v, "--site", site, "--function", "bulk", "--until", "+2h")
        return v, secret

    def target(self, path_kind):
        """(argv prefix, env) for ssh to the device by one path."""
        env = dict(os.environ)
        if path_kind == "direct":
            return ["ssh", *self.opts, "-i", self.path("devkey"), "-p", str(self.device_port),
                    f"{self.user}@127.0.0.1"], env
        if path_kind == "jump":
            proxy = (f"ssh {' '.join(self.opts)} -i {self.path('devkey')} -p {self.jump_port} "
                     f"-W %h:%p {self.user}@127.0.0.1")
            return ["ssh", *self.opts, "-i", self.path("devkey"), "-o", f"ProxyCommand={proxy}",
                    "-p", str(self.device_port), f"{self.user}@127.0.0.1"], env
        v, secret = self.vendor()
        port = self.unrecorded_port if path_kind == "unrecorded" else self.broker_port
        device = "bench-e/dev" if path_kind == "edge" else "bench/dev"
        code = self.path(f"{v}.code")
        with open(code, "w") as f:
            f.write(totp(secret) + "\n")
        env.update(SSH_ASKPASS=self.path("askpass"), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0",
                   BENCH_CODE_FILE=code)
        return ["ssh", *self.opts, "-i", self.path(v), "-p", str(port),
                f"{v}:{device}@127.0.0.1"], env

    # ---- 11. a device web UI's download ----
    def web_download(self, mib, repeat):
        """A large download from a device's HTTPS UI: curl straight to it, against curl through
        the device web front door (signed in with `ssh VENDOR:web`, handed to the device origin)."""
        d = self.path("webdev")
        os.makedirs(d, exist_ok=True)
        self.run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-days", "1", "-subj", "/CN=dev", "-keyout", os.path.join(d, "key.pem"),
                 "-out", os.path.join(d, "cert.pem"))
        with open(os.path.join(d, "big.bin"), "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        with open(os.path.join(d, "small.html"), "w") as f:
            f.write("<p>" + "x" * 1000 + "</p>")
        port = free_port()
        server = ("import http.server, ssl, sys, functools\n"
                  "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])\n"
                  "s = http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), h)\n"
                  "c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
                  "c.load_cert_chain(sys.argv[2] + '/cert.pem', sys.argv[2] + '/key.pem')\n"
                  "s.socket = c.wrap_socket(s.socket, server_side=True)\n"
                  "s.serve_forever()\n")
        self.procs.append(subprocess.Popen(["python3", "-c", server, str(port), d],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port)
        self.pn("device", "web", "bench/dev", "--url", f"https://127.0.0.1:{port}",
                "--cert", os.path.join(d, "cert.pem"))
        self.pn("function", "add", "webbulk", "--allow", f"web:{port}")
        argv, env = self.target("postern")
        v = argv[-1].split(":")[0]
        self.pn("grant", "add", "--vendor", v, "--site", "bench", "--function", "webbulk", "--until", "+2h")
        link = subprocess.run(argv[:-1] + [f"{v}:web@127.0.0.1"], env=env, capture_output=True,
                              text=True, timeout=60).stdout.strip()
        wp = self.web_port
        origin = "dev--bench.devices.bench"
        curl = ["curl", "-s", "--cacert", self.path("data", "keys", "web_ca.crt"),
                "--resolve", f"devices.bench:{wp}:127.0.0.1", "--resolve", f"{origin}:{wp}:127.0.0.1"]

        def header(out, name):
            for line in out.splitlines():
                if line.lower().startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
            raise SystemExit(f"no {name} in: {out[:500]}")

        out = subprocess.run(curl + ["-D", "-", "-o", "/dev/null", link], capture_output=True, text=True).stdout
        session = header(out, "set-cookie").split(";")[0]
        out = subprocess.run(curl + ["-D", "-", "-o", "/dev/null", "-H", f"cookie: {session}",
                                     f"https://devices.bench:{wp}/open/bench/dev"], capture_output=True, text=True).stdout
        out = subprocess.run(curl + ["-D", "-", "-o", "/dev/null", header(out, "location")],
                             capture_output=True, text=True).stdout
        dev = header(out, "set-cookie").split(";")[0]

        def best(cmd):
            top = 0.0
            for _ in range(repeat):
                t = time.time()
                r = subprocess.run(cmd + ["-o", "/dev/null", "-w", "%{http_code} %{size_download}"],
                                   capture_output=True, text=True, timeout=600)
                el = time.time() - t
                code, size = r.stdout.split()
                if code != "200" or int(size) != mib << 20:
                    raise SystemExit(f"download failed: {r.stdout} {r.stderr[-300:]}")
                top = max(top, mib / el)
            return top

        def latency(cmd, url, n=200):
            """Milliseconds per small request, p50 and p95, on one kept-alive connection."""
            each = [arg for _ in range(n) for arg in ("-o", "/dev/null", url)]
            r = subprocess.run(cmd + ["-w", "%{time_total}\\n"] + each,
                               capture_output=True, text=True, timeout=600)
            ms = sorted(float(t) * 1000 for t in r.stdout.split())
            if len(ms) != n:
                raise SystemExit(f"latency run failed: {r.stdout[-300:]} {r.stderr[-300:]}")
            return ms[n // 2], ms[n * 95 // 100]

        direct = best(["curl", "-s", "-k", f"https://127.0.0.1:{port}/big.bin"])
        postern = best(curl + ["-H", f"cookie: {dev}", f"https://{origin}:{wp}/big.bin"])
        lat_direct = latency(["curl", "-s", "-k"], f"https://127.0.0.1:{port}/small.html")
        lat_postern = latency(curl + ["-H", f"cookie: {dev}"], f"https://{origin}:{wp}/small.html")
        return direct, postern, lat_direct, lat_postern

    # ---- 1. throughput ----
    def throughput(self, kinds=None):
        mib = self.args.size_mib
        data = self.path("data.bin")
        if not os.path.exists(data):
            with open(data, "wb") as f:
                for _ in range(mib):
                    f.write(os.urandom(1 << 20))
        rows = []
        for direction in ["device->vendor", "vendor->device"]:
            speeds = {}
            kinds = kinds or ["direct", "jump", "postern"] + (["unrecorded"] if self.args.unrecorded else [])
            for kind in kinds:
                best = 0.0
                for _ in range(self.args.repeat):
                    argv, env = self.target(kind)
                    if direction == "device->vendor":
                        cmd, stdin = argv + [f"cat {data}"], subprocess.DEVNULL
                    else:
                        cmd, stdin = argv + ["cat > /dev/null"], open(data, "rb")
                    t = time.time()
                    r = subprocess.run(cmd, env=env, stdin=stdin, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, timeout=600)
                    el = time.time() - t
                    if r.returncode != 0:
                        raise SystemExit(f"{kind} {direction}: {r.stderr.decode()[-300:]}")
                    best = max(best, mib / el)
                speeds[kind] = best
            rows.append((direction, speeds))
        return rows

    # ---- 2. setup latency ----
    def setup_latency(self):
        out = {}
        for kind in ["direct", "postern"]:
            times = []
            for _ in range(self.args.setups):
                argv, env = self.target(kind)
                t = time.time()
                r = subprocess.run(argv + ["echo", "x"], env=env, stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=30)
                times.append(time.time() - t)
                if r.returncode != 0 or b"x" not in r.stdout:
                    raise SystemExit(f"{kind} setup: {r.stderr.decode()[-300:]}")
            out[kind] = times
        return out

    # ---- 3. keystroke echo ----
    def echo_latency(self):
        out = {}
        for kind in ["direct", "postern"]:
            argv, env = self.target(kind)
            pid, fd = pty.fork()
            if pid == 0:
                os.execvpe("ssh", ["ssh", "-tt"] + argv[1:], env)
            buf = b""

            def read_until(pred, timeout):
                nonlocal buf
                end = time.time() + timeout
                while time.time() < end:
                    r, _, _ = select.select([fd], [], [], 0.05)
                    if r:
                        try:
                            buf += os.read(fd, 65536)
                        except OSError:
                            break
                    if pred(buf):
                        return True
                return False

            # The prompt is spelt so that the echo of this very line does not match it.
            os.write(fd, b"PS1='RE''ADY> '\r")
            if not read_until(lambda b: b"READY> " in b, 20):
                raise SystemExit(f"{kind}: no shell prompt: {buf[-300:]!r}")
            time.sleep(0.3)
            read_until(lambda b: False, 0.2)
            times = []
            for i in range(self.args.keys):
                buf = b""
                ch = b"abcdefghij"[i % 10:i % 10 + 1]
                t = time.time()
                os.write(fd, ch)
                if not read_until(lambda b: ch in b, 5):
                    raise SystemExit(f"{kind}: no echo")
                times.append(time.time() - t)
                if i % 20 == 19:
                    os.write(fd, b"\x15")  # clear the line
                    read_until(lambda b: False, 0.05)
            os.write(fd, b"\x15exit\r")
            read_until(lambda b: False, 0.5)
            try:
                os.close(fd)
                os.waitpid(pid, 0)
            except OSError:
                pass
            out[kind] = times
        return out

    # ---- 4. many idle sessions ----
    def concurrency(self):
        n = self.args.sessions
        out = {}
        for kind in ["direct", "postern"]:
            base = rss_kib(self.broker.pid)
            procs = []
            t = time.time()
            for i in range(n):
                argv, env = self.target(kind)
                procs.append(subprocess.Popen(argv[:1] + ["-tt"] + argv[1:] + ["echo up; exec sleep 600"], env=env,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL))
            # All up: each printed "up" (after whatever the account's shell start-up prints).
            for p in procs:
                for _ in range(50):
                    line = p.stdout.readline()
                    if not line or line.startswith(b"up"):
                        break
                if not line.startswith(b"up"):
                    raise SystemExit(f"{kind}: a session did not start")
            el = time.time() - t
            time.sleep(8)  # idle: a recording rests after 5 quiet seconds
            rss = rss_kib(self.broker.pid)
            out[kind] = (n / el, (rss - base) / n if kind == "postern" else None, rss)
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
            time.sleep(2)
        return out

    # ---- 4b. thousands of sessions ----
    def sim_device(self):
        """One scripted simulated device (`postern simulate --scripted`), imported as site-0000/dev-00."""
        sim_list = self.path("sim.csv")
        sim = subprocess.Popen([self.postern, "simulate", "--sites", "1", "--devices", "1", "--scripted",
                                "--authorized-key", self.path("devkey.pub"), "--out", sim_list],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(sim)
        end = time.time() + 30
        while not os.path.exists(sim_list):
            if time.time() > end:
                raise SystemExit("postern simulate wrote no device list")
            time.sleep(0.1)
        self.pn("device", "import", sim_list, "--login", "sim", "--key", self.path("devkey"))

    def scale_edge(self):
        """With --scale-via-edge: the simulated device's site is reached through a site edge
        (`postern edge run`), so the broker holds one descriptor per idle session (the vendor's
        socket; the device's side is a stream inside the edge's one TLS link) and the device
        sockets are the edge's. Returns the edge process."""
        return self.start_edge("bench-s1", "site-0000", "edge-s1")

    def scale(self):
        """Sessions opened in-process (`postern bench-load`) to one scripted simulated device."""
        self.sim_device()
        edge = self.scale_edge() if self.args.scale_via_edge else None
        out = []
        for n in self.args.scale:
            before = rss_kib(self.broker.pid)
            edge_before = rss_kib(edge.pid) if edge else 0
            cpu_before = cpu_seconds(self.broker.pid)
            # One session types a command every 0.2 s while the others idle: its round trip.
            p = subprocess.Popen([self.load_gen, "bench-load", "--data", self.path("data"),
                                  "--broker", f"127.0.0.1:{self.broker_port}", "--target", "site-0000/dev-00:bulk",
                                  "--sessions", str(n), "--parallel", "32", "--hold", str(self.args.hold),
                                  "--every", "0.2", "--typists", "1", "--report", str(self.args.hold)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            if "sessions up" not in line:
                p.kill()
                raise SystemExit(f"bench-load {n}: {line} {p.stderr.read()[-500:]}")
            rate = float(line.split("(")[1].split()[0])
            # The broker's CPU time per setup (both cores' worth, every thread), from /proc.
            cpu_ms = (cpu_seconds(self.broker.pid) - cpu_before) * 1000 / n
            time.sleep(8)  # idle: recordings rest after 5 quiet seconds
            rss = rss_kib(self.broker.pid)
            if edge:
                edge_rss = rss_kib(edge.pid)
                print(f"   (the edge process: RSS {edge_rss / 1024:.1f} MiB, "
                      f"{(edge_rss - edge_before) / n:.0f} KiB/session)", flush=True)
            echo = p.stdout.readline()
            p.wait(timeout=120 + self.args.hold)
            if " 0 failed" not in echo:
                print(f"   (bench-load {n}: {echo.strip()}; {p.stderr.read()[-500:].strip()})", flush=True)
            try:
                p50 = float(echo.split("p50 ")[1].split()[0])
                p99 = float(echo.split("p99 ")[1].split()[0])
            except (IndexError, ValueError):
                raise SystemExit(f"bench-load {n}: no round trip line: {echo!r}")
            out.append((n, rate, cpu_ms, (rss - before) / n, rss, p50, p99))
            time.sleep(5)
        return out

    # ---- 8. credential rotation at scale ----
    def rotation(self, n):
        """`device rotate --all` over N scripted simulated devices, against `scan` of the same fleet.

        The fleet has a data dir of its own: rotation rewrites each login's
        ~/.ssh/authorized_keys, and only the simulated logins' homes may be touched here."""
        per = min(10, n)
        sites = max(1, n // per)
        n = sites * per
        data, fleet, homes = self.path("fleet-data"), self.path("fleet.csv"), self.path("fleet.homes")
        self.run(self.postern, "init", "--data", data)
        sim = subprocess.Popen([self.postern, "simulate", "--sites", str(sites), "--devices", str(per),
                                "--scripted", "--authorized-key", self.path("devkey.pub"),
                                "--out", fleet, "--homes", homes],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(sim)
        end = time.time() + 300
        while not os.path.exists(fleet):
            if time.time() > end or sim.poll() is not None:
                raise SystemExit("postern simulate wrote no device list")
            time.sleep(0.2)
        self.run(self.postern, "device", "import", fleet, "--login", "sim", "--key",
                 self.path("devkey"), "--data", data)

        def timed(*args):
            t0 = time.time()
            r = subprocess.run([self.postern, *args, "--json", "--data", data,
                                "--concurrency", str(self.args.rotate_concurrency)],
                               capture_output=True, text=True, timeout=3600)
            return time.time() - t0, r

        scan_s, scan = timed("scan")
        if scan.returncode != 0:
            raise SystemExit(f"scan: {scan.stderr[-500:]}")
        rot_s, rot = timed("device", "rotate", "--all")
        try:
            outcomes = json.loads(rot.stdout)
        except json.JSONDecodeError:
            raise SystemExit(f"device rotate: {rot.stderr[-500:]}")
        rotated = sum(1 for o in outcomes if o["result"] == "rotated")
        failed = [o for o in outcomes if o["result"] == "failed"]
        # What the devices themselves now hold: one key each, and not the enrolment key.
        enrol_key = open(self.path("devkey.pub")).read().split()[1]
        one_new = 0
        for site in os.listdir(homes):
            for dev in os.listdir(os.path.join(homes, site)):
                lines = [l for l in open(os.path.join(homes, site, dev, ".ssh", "authorized_keys"))
                         if l.strip() and not l.startswith("#")]
                one_new += len(lines) == 1 and enrol_key not in lines[0]
        sim.terminate()
        sim.wait(timeout=30)
        return {"devices": n, "scan_s": scan_s, "rot_s": rot_s, "rotated": rotated,
                "failed": len(failed), "first_error": failed[0]["error"] if failed else "",
                "one_new_key": one_new}

    # ---- 9. site edges ----
    def edges_online(self, prefix):
        rows = json.loads(self.pn("edge", "list", "--json"))
        return sum(1 for r in rows if r["name"].startswith(prefix) and r["online"])

    def wait_edges(self, prefix, n, timeout):
        t0 = time.time()
        while self.edges_online(prefix) < n:
            if time.time() - t0 > timeout:
                raise SystemExit(f"only {self.edges_online(prefix)} of {n} edges online after {timeout}s")
            time.sleep(0.25)
        return time.time() - t0

    def start_edge(self, name, site, data):
        """Edge `name` for `site`, joined and running (`postern edge run`) from its own data dir
        `data`, connected to the central; returns its process."""
        token = json.loads(self.pn("edge", "add", name, "--sites", site, "--json"))["token"]
        self.run(self.postern, "edge", "join", "--central", f"127.0.0.1:{self.edge_port}",
                 "--token", token, "--data", self.path(data))
        edge = subprocess.Popen([self.postern, "edge", "run", "--data", self.path(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(edge)
        self.wait_edges(name, 1, 30)
        return edge

    def edge_throughput(self):
        """The bench device again as site bench-e, reached through an edge (`postern edge run`)."""
        self.pn("site", "add", "bench-e")
        self.pn("device", "add", "bench-e/dev", "--addr", f"127.0.0.1:{self.device_port}",
                "--login", self.user, "--key", self.path("devkey"), "--host-key", self.path("host.pub"))
        self.start_edge("bench-e1", "bench-e", "edge-e1")
        self.edge_site = True
        return self.throughput(["direct", "postern", "edge"])

    def edges(self, n):
        """N edges in one process (`postern bench-edges`): central memory per edge, then the time
        for all of them to be back after the central restarts."""
        rss0 = rss_kib(self.broker.pid)
        out = open(self.path("bench-edges.out"), "w")
        p = subprocess.Popen([self.postern, "bench-edges", "--data", self.path("data"),
                              "--central", f"127.0.0.1:{self.edge_port}", "--edges", str(n),
                              "--dir", self.path("edges")], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        up = self.wait_edges("bench-edge-", n, 900)
        time.sleep(5)
        rss1 = rss_kib(self.broker.pid)
        self.broker.send_signal(15)
        self.broker.wait(timeout=60)
        t0 = time.time()
        self.broker, self.broker_port = self.start_broker(self.postern, "serve")
        restart = time.time() - t0
        storm = self.wait_edges("bench-edge-", n, 900)
        time.sleep(5)
        rss2 = rss_kib(self.broker.pid)
        p.terminate()
        return {"n": n, "up": up, "per_edge": (rss1 - rss0) / n, "rss": rss1, "restart": restart,
                "storm": storm, "rss_after": rss2}

    def edge_backlog(self, sessions, mib):
        """A site's day of work done while its link is down: `sessions` sessions of `mib` MiB of
        output each, at an edge's own front door with the link to the central cut, then shipped
        when it comes back. Returns the backlog's size and the time until the central has it all."""
        self.pn("site", "add", "bench-b")
        self.pn("device", "add", "bench-b/dev", "--addr", f"127.0.0.1:{self.device_port}",
                "--login", self.user, "--key", self.path("devkey"), "--host-key", self.path("host.pub"))
        token = json.loads(self.pn("edge", "add", "bench-b1", "--sites", "bench-b", "--json"))["token"]
        relay = Relay(self.edge_port)
        edge = self.path("edge-b1")
        self.run(self.postern, "edge", "join", "--central", f"127.0.0.1:{relay.port}",
                 "--token", token, "--data", edge)
        self.run(self.postern, "keys", "certify", "--root", self.path("root.key"),
                 "--data", os.path.join(edge, "site"))
        vendors = []
        for _ in range(sessions):
            v, secret = self.vendor()
            self.pn("grant", "add", "--vendor", v, "--site", "bench-b", "--function", "bulk",
                    "--until", "+2h")
            vendors.append((v, secret))
        port = free_port()
        self.procs.append(subprocess.Popen(
            [self.postern, "edge", "run", "--data", edge, "--ssh-listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port, 60)
        self.wait_edges("bench-b1", 1, 60)
        end = time.time() + 60
        while True:
            row = next(r for r in json.loads(self.pn("edge", "list", "--json")) if r["name"] == "bench-b1")
            if row["policy_version"] and row["policy_acked"] == row["policy_version"]:
                policy = open(os.path.join(edge, "edge", "policy.json")).read()
                if all(v in policy for v, _ in vendors):
                    break
            if time.time() > end:
                raise SystemExit(f"the edge never held the vendors' grants: {row}")
            time.sleep(0.25)
        relay.sever()
        end = time.time() + 60
        while self.edges_online("bench-b1"):
            if time.time() > end:
                raise SystemExit("the edge stayed online after the cut")
            time.sleep(0.25)
        opts = ["-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
        t0 = time.time()
        for v, secret in vendors:
            code = self.path(f"{v}.code")
            with open(code, "w") as f:
                f.write(totp(secret) + "\n")
            env = dict(os.environ, SSH_ASKPASS=self.path("askpass"), SSH_ASKPASS_REQUIRE="force",
                       DISPLAY=":0", BENCH_CODE_FILE=code)
            r = subprocess.run(["ssh", *opts, "-i", self.path(v), "-p", str(port),
                                f"{v}:bench-b/dev@127.0.0.1", f"head -c {mib * 1048576} /dev/urandom"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
            if r.returncode != 0:
                raise SystemExit(f"session at the edge: {r.stderr.decode().strip()}")
        recorded = time.time() - t0
        time.sleep(2)
        rec_dir = os.path.join(edge, "site", "recordings")
        backlog = sum(os.path.getsize(os.path.join(rec_dir, f)) for f in os.listdir(rec_dir))
        relay.restore()
        t0 = time.time()
        # The edge reconnects by itself after a jittered, growing delay (up to 30 s).
        end = t0 + 120
        while not self.edges_online("bench-b1"):
            if time.time() > end:
                raise SystemExit("the edge did not come back")
            time.sleep(0.1)
        online = time.time() - t0
        t0 = time.time()
        end = t0 + 1800
        while True:
            here = [s for s in json.loads(self.pn("sessions", "--json")) if s["node"] == "edge-bench-b1"]
            if len(here) >= sessions:
                break
            if time.time() > end:
                raise SystemExit(f"only {len(here)} of {sessions} sessions arrived")
            time.sleep(0.2)
        caught_up = time.time() - t0
        verified = subprocess.run([self.postern, "verify", here[0]["id"], "--data", self.path("data")],
                                  capture_output=True, text=True)
        return {"sessions": sessions, "backlog": backlog, "recorded": recorded, "online": online,
                "caught_up": caught_up, "verified": verified.returncode == 0}

    # ---- soak: memory over time ----
    def soak(self):
        """N sessions typing for a bounded time while the broker's RSS is sampled."""
        a = self.args
        self.sim_device()
        hold = int(a.minutes * 60)
        p = subprocess.Popen([self.postern, "bench-load", "--data", self.path("data"),
                              "--broker", f"127.0.0.1:{self.broker_port}", "--target", "site-0000/dev-00:bulk",
                              "--sessions", str(a.sessions), "--parallel", "32", "--hold", str(hold),
                              "--every", str(a.every), "--report", str(a.sample)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        line = p.stdout.readline()
        if "sessions up" not in line:
            p.kill()
            raise SystemExit(f"bench-load: {line} {p.stderr.read()[-500:]}")
        print(line.strip())
        os.set_blocking(p.stdout.fileno(), False)
        pid = self.broker.pid
        t0 = time.time()
        rows = []  # (seconds, rss KiB, threads, fds, commands answered, failed)
        answered, failed, pending = 0, 0, ""
        print(f"   {'t (s)':>7}{'RSS MiB':>10}{'threads':>9}{'fds':>7}{'answered':>10}{'failed':>8}")
        # Bounded: one sample per interval for the hold, plus a few for the tail.
        for i in range(hold // a.sample + 2):
            time.sleep(max(0.0, t0 + i * a.sample - time.time()))
            try:
                chunk = p.stdout.read() or ""
            except (BlockingIOError, TypeError):
                chunk = ""
            pending += chunk
            *done, pending = pending.split("\n")
            for l in done:
                # "bench-load: at T s: N commands answered, F failed, total M, ..."
                if " commands answered" in l:
                    answered += int(l.split(": ")[2].split()[0])
                    failed += int(l.split(", ")[1].split()[0])
            rss, threads, fds = proc_sample(pid)
            t = time.time() - t0
            rows.append((t, rss, threads, fds, answered, failed))
            print(f"   {t:>7.0f}{rss / 1024:>10.1f}{threads:>9}{fds:>7}{answered:>10}{failed:>8}", flush=True)
            if p.poll() is not None and i * a.sample >= hold:
                break
        p.wait(timeout=120)
        for l in (pending + (p.stdout.read() or "")).splitlines():
            if " commands answered" in l:
                answered += int(l.split(": ")[2].split()[0])
                failed += int(l.split(", ")[1].split()[0])
        time.sleep(5)  # the sessions closed: what stays after them
        after = proc_sample(pid)
        os.makedirs(TARGET, exist_ok=True)
        csv = os.path.join(TARGET, f"soak-{time.strftime('%Y%m%d-%H%M%S')}.csv")
        with open(csv, "w") as f:
            f.write("seconds,rss_kib,threads,fds,commands_answered,commands_failed\n")
            for r in rows:
                f.write(f"{r[0]:.1f},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}\n")
        return rows, answered, failed, after, csv

    def close(self):
        for p in self.procs:
            p.terminate()  # a profiler around the broker writes its report on the way out
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.w, ignore_errors=True)


def latency_table(title, times, digits, overhead=False):
    """p50 and p99 in ms of direct and Postern timings (seconds), and Postern's overhead if asked."""
    print(title)
    print(f"   {'path':<16}{'p50':>9}{'p99':>9}")
    rows = [("direct", pct(times["direct"], .5), pct(times["direct"], .99)),
            ("Postern", pct(times["postern"], .5), pct(times["postern"], .99))]
    if overhead:
        rows.append(("overhead", rows[1][1] - rows[0][1], rows[1][2] - rows[0][2]))
    for label, p50, p99 in rows:
        print(f"   {label:<16}{p50 * 1e3:>9.{digits}f}{p99 * 1e3:>9.{digits}f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a quick check)")
    ap.add_argument("--debug", action="store_true", help="use the debug build (smoke only: not for figures)")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2, help="best of N per throughput cell")
    ap.add_argument("--setups", type=int, default=40)
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=None,
                    help="table 4's sessions (default 100); with --soak, the sessions held (default 500)")
    ap.add_argument("--soak", action="store_true",
                    help="only the soak: sessions typing for --minutes while the broker's RSS is sampled")
    ap.add_argument("--minutes", type=float, default=30, help="soak duration")
    ap.add_argument("--every", type=float, default=5, help="soak: seconds between one session's commands")
    ap.add_argument("--sample", type=int, default=10, help="soak: seconds between samples")
    ap.add_argument("--scale", default="1000,5000",
                    help="session counts for the in-process concurrency run (comma-separated; empty to skip)")
    ap.add_argument("--rotation", type=int, default=5000,
                    help="simulated devices for the credential rotation run (0 to skip)")
    ap.add_argument("--rotate-concurrency", type=int, default=16,
                    help="devices rotated (and scanned) at once in the rotation run")
    ap.add_argument("--only-rotation", action="store_true", help="only the credential rotation run")
    ap.add_argument("--edges", type=int, default=1000,
                    help="site edges connected at once in the edge run (0 to skip)")
    ap.add_argument("--only-edges", action="store_true", help="only the site edge run")
    ap.add_argument("--backlog", type=int, default=50,
                    help="sessions recorded at an edge while its link is cut, then shipped (0 to skip)")
    ap.add_argument("--backlog-mib", type=int, default=4, help="MiB of output per backlog session")
    ap.add_argument("--only-backlog", action="store_true", help="only the edge backlog run")
    ap.add_argument("--only-web", action="store_true", help="only the device web UI download run")
    ap.add_argument("--baseline", metavar="POSTERN",
                    help="with --only-scale: an earlier build's postern binary, measured first in the same run")
    ap.add_argument("--only-scale", action="store_true",
                    help="only table 4b (e.g. with BENCH_BROKER_WRAPPER to profile a burst of setups)")
    ap.add_argument("--hold", type=int, default=20,
                    help="table 4b: seconds the sessions are held idle; the typing session's round trip "
                         "is sampled every 0.2 s meanwhile (20 s: 100 samples)")
    ap.add_argument("--scale-via-edge", action="store_true",
                    help="table 4b with the device's site behind a site edge (the broker then holds one "
                         "descriptor per idle session, not two)")
    ap.add_argument("--no-unrecorded", dest="unrecorded", action="store_false",
                    help="skip the recording-off comparison (it needs a second release build)")
    a = ap.parse_args()
    if a.sessions is None:
        a.sessions = 500 if a.soak else 100
    if a.soak:
        return soak_main(a)
    if a.quick:
        a.size_mib, a.repeat, a.setups, a.keys, a.sessions = 8, 1, 4, 20, 5
        a.unrecorded = False
        a.scale = "50"
        a.rotation = min(a.rotation, 50)
        a.edges = min(a.edges, 20)
        a.backlog, a.backlog_mib = min(a.backlog, 3), 1
    if a.only_web:
        a.unrecorded, a.rotation, a.edges, a.backlog = False, 0, 0, 0
    if a.only_backlog:
        a.only_edges = True
        a.edges = 0
    if a.only_rotation or a.only_edges:
        a.unrecorded = False
    if a.only_rotation:
        a.edges = 0
        a.backlog = 0
    if a.only_edges:
        a.rotation = 0
    a.scale = [int(x) for x in str(a.scale).split(",") if x.strip()]
    b = Bench(a)
    try:
        b.setup()
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
              f"{platform.system()} {platform.release()}; "
              f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}")
        if a.only_scale:
            scale_table(b, a.baseline)
            return
        if not (a.only_rotation or a.only_edges or a.only_web):
            main_tables(a, b)
        if a.only_web or not (a.only_rotation or a.only_edges):
            direct, via, lat_d, lat_p = b.web_download(a.size_mib, a.repeat)
            print()
            print(f"11. a device web UI's download, {a.size_mib} MiB over HTTPS, best of {a.repeat} (MiB/s)")
            print(f"   {'direct':>9}{'Postern':>9}{'Postern/direct':>16}")
            print(f"   {direct:>9.0f}{via:>9.0f}{via / direct:>16.2f}")
            print("   a 1 KiB page, 200 requests on one connection (ms per request)")
            print(f"   {'':>9}{'direct':>9}{'Postern':>9}{'Postern/direct':>16}")
            for i, q in enumerate(["p50", "p95"]):
                print(f"   {q:>9}{lat_d[i]:>9.2f}{lat_p[i]:>9.2f}{lat_p[i] / lat_d[i]:>16.2f}")
        if a.rotation:
            print()
            r = b.rotation(a.rotation)
            print(f"8. credential rotation of {r['devices']} scripted simulated devices, "
                  f"{a.rotate_concurrency} at a time, against a scan of the same fleet")
            print(f"   {'run':<28}{'seconds':>9}{'devices/s':>11}")
            print(f"   {'scan (1 login, 1 read)':<28}{r['scan_s']:>9.1f}{r['devices'] / r['scan_s']:>11.1f}")
            print(f"   {'rotate (2 logins, 4 cmds)':<28}{r['rot_s']:>9.1f}{r['devices'] / r['rot_s']:>11.1f}")
            print(f"   rotate / scan time {r['rot_s'] / r['scan_s']:.2f}; rotated {r['rotated']}, "
                  f"failed {r['failed']}{(': ' + r['first_error']) if r['failed'] else ''}; "
                  f"devices holding exactly one new key afterwards: {r['one_new_key']}")
        if a.edges:
            print()
            print(f"9a. bulk throughput through a site edge, {a.size_mib} MiB, best of {a.repeat} (MiB/s)")
            print(f"   {'direction':<16}{'direct':>9}{'Postern':>9}{'via edge':>10}{'edge/Postern':>14}{'edge/direct':>13}")
            for direction, s in b.edge_throughput():
                print(f"   {direction:<16}{s['direct']:>9.0f}{s['postern']:>9.0f}{s['edge']:>10.0f}"
                      f"{s['edge'] / s['postern']:>14.2f}{s['edge'] / s['direct']:>13.2f}")
            e = b.edges(a.edges)
            print()
            print(f"9b. {e['n']} site edges in one process connected to one central")
            print(f"   all joined and online after {e['up']:.1f}s; central RSS {e['rss'] / 1024:.1f} MiB, "
                  f"{e['per_edge']:.0f} KiB per connected edge")
            print(f"   central restarted (listening {e['restart']:.1f}s after the stop): all {e['n']} back "
                  f"online {e['storm']:.1f}s after it listened; RSS then {e['rss_after'] / 1024:.1f} MiB")
        if a.backlog:
            print()
            r = b.edge_backlog(a.backlog, a.backlog_mib)
            mib = r["backlog"] / 1048576
            print(f"9c. an edge's backlog: {r['sessions']} sessions of {a.backlog_mib} MiB output each, "
                  f"recorded at its front door with the link cut ({r['recorded']:.1f}s), then shipped")
            print(f"   backlog {mib:.1f} MiB; edge back online {r['online']:.1f}s after the link returned; "
                  f"all at the central, checked and indexed, {r['caught_up']:.1f}s after that: "
                  f"{mib / r['caught_up']:.1f} MiB/s; verify of one there: {'ok' if r['verified'] else 'FAILED'}")
    finally:
        b.close()


def main_tables(a, b):
    """Tables 1 to 4b: the SSH path against OpenSSH."""
    print()
    print(f"1. bulk throughput, {a.size_mib} MiB incompressible, best of {a.repeat} (MiB/s)")
    print(f"   {'direction':<16}{'direct':>9}{'ProxyJump':>11}{'Postern':>9}{'vs direct':>11}{'vs jump':>9}")
    rows = b.throughput()
    for direction, s in rows:
        print(f"   {direction:<16}{s['direct']:>9.0f}{s['jump']:>11.0f}{s['postern']:>9.0f}"
              f"{s['postern'] / s['direct']:>11.2f}{s['postern'] / s['jump']:>9.2f}")
    if a.unrecorded:
        print()
        print("1b. recording overhead: the same transfers through a broker built without recording (MiB/s)")
        print(f"   {'direction':<16}{'recording on':>14}{'off':>9}{'on / off':>10}")
        for direction, s in rows:
            print(f"   {direction:<16}{s['postern']:>14.0f}{s['unrecorded']:>9.0f}"
                  f"{s['postern'] / s['unrecorded']:>10.2f}")
    print()
    latency_table(f"2. session setup, `ssh HOST echo x` wall time over {a.setups} runs (ms)",
                  b.setup_latency(), 1, overhead=True)
    print()
    latency_table(f"3. keystroke echo in a shell, {a.keys} keys (ms)", b.echo_latency(), 2)
    print()
    conc = b.concurrency()
    print(f"4. {a.sessions} interactive sessions opened at once, then idle")
    print(f"   {'path':<16}{'setups/s':>9}{'broker KiB/session':>20}{'broker RSS MiB':>16}")
    for k, label in [("direct", "sshd direct"), ("postern", "Postern")]:
        rate, per, rss = conc[k]
        print(f"   {label:<16}{rate:>9.1f}{('-' if per is None else f'{per:.0f}'):>20}{rss / 1024:>16.1f}")
    if a.scale:
        scale_table(b)


def scale_table(b, baseline=None):
    """Table 4b; with `baseline` (an earlier build's `postern`), that build first, on its own data
    dir in the same run, then this one: the two rounds side by side."""
    builds = [("this build", b)]
    if baseline:
        base = Bench(b.args)
        base.postern, base.build = os.path.abspath(baseline), False
        builds.insert(0, ("baseline", base))
    print()
    via = ", through a site edge" if b.args.scale_via_edge else ""
    print(f"4b. sessions opened in-process (certificate + TOTP + pty shell) to one scripted simulated device{via}, then idle")
    print("   (CPU ms/setup: the broker's CPU time over the burst per session; round trip: one session's")
    print("   `echo` every 0.2 s, from typing to its output, while all the others idle)")
    print(f"   {'sessions':<10}{'setups/s':>9}{'CPU ms/setup':>14}{'KiB/session':>13}{'RSS MiB':>9}"
          f"{'round trip p50':>16}{'p99 ms':>8}")
    for label, bench in builds:
        if len(builds) > 1:
            print(f"   {label}: {bench.postern}")
        try:
            if bench is not b:
                bench.setup()
            for n, rate, cpu_ms, per, rss, p50, p99 in bench.scale():
                print(f"   {n:<10}{rate:>9.1f}{cpu_ms:>14.2f}{per:>13.0f}{rss / 1024:>9.1f}"
                      f"{p50:>16.2f}{p99:>8.2f}", flush=True)
        finally:
            if bench is not b:
                bench.close()


def soak_main(a):
    a.unrecorded = False
    b = Bench(a)
    try:
        b.setup()
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
              f"{platform.system()} {platform.release()}")
        print(f"soak: {a.sessions} sessions, one command each every {a.every:g} s, for {a.minutes:g} min; "
              f"broker sampled every {a.sample} s")
        base = proc_sample(b.broker.pid)
        rows, answered, failed, after, csv = b.soak()
        # Slopes over the samples taken while the sessions were held (not their closing).
        hold = a.minutes * 60
        held = [r for r in rows if r[0] < hold - 1] or rows
        t_end = held[-1][0]
        first = [(t, r) for t, r, *_ in held if t <= t_end / 2]
        second = [(t, r) for t, r, *_ in held if t >= t_end / 2]
        print()
        print(f"   broker RSS before the sessions {base[0] / 1024:.1f} MiB; with them "
              f"{rows[0][1] / 1024:.1f} MiB at the start, {held[-1][1] / 1024:.1f} MiB at the end, "
              f"peak {max(r for _, r, *_ in rows) / 1024:.1f} MiB ("
              f"{max(r[2] for r in rows)} threads at most, while opening or closing them); "
              f"{after[0] / 1024:.1f} MiB 5 s after they closed")
        print(f"   RSS slope: first half {slope(first):+.2f} KiB/s, second half {slope(second):+.2f} KiB/s")
        print(f"   threads {base[1]} -> {after[1]}, open fds {base[2]} -> {after[2]} (before -> after)")
        print(f"   commands answered {answered}, failed {failed}")
        print(f"   samples: {csv}")
    finally:
        b.close()


if __name__ == "__main__":
    main()
