//! Shared by the end-to-end tests (the `harness` module of the `e2e` test binary). All the tests
//! are one binary, so a helper no test uses is dead code and clippy says so.
//!
//! Test harness: a world with a real OpenSSH `sshd` as the device on loopback, the real
//! `postern serve` in front of it, and helpers that drive the real OpenSSH clients as vendors.
//!
//! Each vendor has its own TOTP secret, and each code is usable once: the harness hands out codes
//! for successive time steps (previous, current, next — what the broker accepts), waiting for the
//! next step only when a vendor has used all three.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The postern binary, built by Cargo for these tests.
pub fn postern_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_postern"))
}

/// Credentials for the tests' own S3-compatible server (it accepts any, but requests must be
/// signed); nodes without an evidence store ignore them.
pub const S3_TEST_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "postern-test"),
    ("AWS_SECRET_ACCESS_KEY", "postern-test"),
    ("AWS_REGION", "us-east-1"),
];

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on port {port}");
}

pub fn need(cmd: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        let p = Path::new(dir).join(cmd);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{cmd} is needed by the end-to-end tests: install openssh-server and openssh-client (.ci/run does)"
    );
}

/// `cmd` as found on PATH (tools installed with pip, e.g. by `.ci/run`).
pub fn on_path(cmd: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(cmd))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{cmd} is needed by the end-to-end tests (.ci/run installs it)"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub fn keygen(path: &Path, comment: &str) {
    let out = run(Command::new(need("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path));
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A vendor person: key, certificate, TOTP secret and the steps already used.
pub struct Vendor {
    pub name: String,
    pub key: PathBuf,
    pub secret: String,
    next_step: Mutex<u64>,
}

/// The code for the next unused step of `secret`; waits for time to move on when needed. A step
/// is accepted while the clock is within one step of it, so a code is never handed out with less
/// than five seconds of validity left.
fn next_totp(secret: &str, next_step: &Mutex<u64>) -> String {
    let mut next = next_step.lock().unwrap();
    loop {
        let now = unix_now();
        let now_step = now / 30;
        *next = (*next).max(now_step.saturating_sub(1));
        while (*next + 2) * 30 < now + 5 {
            *next += 1;
        }
        if *next <= now_step + 1 {
            let code = approvals::totp::code_at(secret, *next * 30).unwrap();
            *next += 1;
            return code;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An approver: name, initial password, TOTP secret and the steps already used.
pub struct Approver {
    pub name: String,
    pub password: String,
    pub secret: String,
    pub next_step: Mutex<u64>,
}

impl Approver {
    pub fn next_code(&self) -> String {
        next_totp(&self.secret, &self.next_step)
    }

    /// A code for a step already used (to test replay protection).
    pub fn used_code(&self) -> String {
        let step = *self.next_step.lock().unwrap() - 1;
        approvals::totp::code_at(&self.secret, step * 30).unwrap()
    }
}

impl Vendor {
    /// A vendor whose key and TOTP secret came from elsewhere (self-service enrolment).
    pub fn enrolled(name: &str, key: PathBuf, secret: String) -> Vendor {
        Vendor {
            name: name.into(),
            key,
            secret,
            next_step: Mutex::new(0),
        }
    }

    /// The code for the next unused step (see [`next_totp`]).
    pub fn next_code(&self) -> String {
        next_totp(&self.secret, &self.next_step)
    }

    /// The code of the newest acceptable step (valid for the next 30 to 60 seconds), marking it used.
    pub fn newest_code(&self) -> String {
        let now_step = unix_now() / 30;
        let mut next = self.next_step.lock().unwrap();
        *next = (*next).max(now_step + 1);
        drop(next);
        self.next_code()
    }

    /// A code for a step already used (to test replay protection).
    pub fn used_code(&self) -> String {
        let step = *self.next_step.lock().unwrap() - 1;
        approvals::totp::code_at(&self.secret, step * 30).unwrap()
    }

    pub fn cert(&self) -> PathBuf {
        PathBuf::from(format!("{}-cert.pub", self.key.display()))
    }
}

/// Makes the operator root key `root_key` (and `root_key.pub`) if it does not exist yet, and
/// certifies the seal key of data directory `data` with it, as an operator does before `serve`.
pub fn certify_seal_key(data: &Path, root_key: &Path) {
    let postern = |args: &[&str]| {
        let o = run(Command::new(postern_bin())
            .args(args)
            .arg("--data")
            .arg(data));
        assert!(
            o.status.success(),
            "postern {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let key = root_key.to_str().unwrap();
    if !root_key.exists() {
        postern(&["keys", "root", "init", "--out", key]);
    }
    postern(&["keys", "certify", "--root", key]);
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub broker_port: u16,
    /// The approvers' web UI, `http://127.0.0.1:PORT`.
    pub web_url: String,
    pub sshd_port: u16,
    broker: Option<Child>,
    sshd: Child,
    pub broker_log: Arc<Mutex<String>>,
    known_hosts: PathBuf,
    askpass: PathBuf,
    code_file: PathBuf,
    pub device_login: String,
    pub sshd_host_pub: PathBuf,
}

impl World {
    /// A data dir with one site (`site-a`, `site-b`), one device each (`dev`, the local sshd),
    /// functions `shell-only` (shell), `maint` (shell,exec) and `full` (shell,exec,sftp,forward),
    /// then `postern serve`. `warn_before` goes to the config.
    pub fn new(forward_port: u16, warn_before: &str) -> World {
        World::with_config(forward_port, warn_before, "")
    }

    /// Like [`World::new`], with extra lines appended to postern.toml.
    pub fn with_config(forward_port: u16, warn_before: &str, extra_config: &str) -> World {
        World::with_root(forward_port, warn_before, extra_config, None)
    }

    /// Like [`World::with_config`], the seal key certified by the operator root key `root_key`
    /// (made if missing; one of the world's own when `None`).
    pub fn with_root(
        forward_port: u16,
        warn_before: &str,
        extra_config: &str,
        root_key: Option<&Path>,
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let data = root.join("data");
        let w_init = run(Command::new(postern_bin())
            .arg("init")
            .arg("--data")
            .arg(&data));
        assert!(
            w_init.status.success(),
            "init: {}",
            String::from_utf8_lossy(&w_init.stderr)
        );
        // The operator's root key lives outside the data directory; it certifies the node's
        // seal key, without which `serve` refuses to start.
        let own_root = root.join("root.key");
        certify_seal_key(&data, root_key.unwrap_or(&own_root));
        let cfg_path = data.join("postern.toml");
        // Every test vendor connects from 127.0.0.1: exempt it from per-source caps and penalties
        // (the flood tests attack from other loopback addresses). Keys given in `extra_config`
        // replace the ones `init` wrote.
        // No edge listener unless a test asks for one (the default port is one for all).
        let edges = if extra_config.contains("edge_listen") {
            ""
        } else {
            "edge_listen = \"off\"\n"
        };
        // Nor a metrics listener (its default port too).
        let metrics = if extra_config.contains("metrics_listen") {
            ""
        } else {
            "metrics_listen = \"off\"\n"
        };
        let extra = format!(
            "warn_before = \"{warn_before}\"\npenalty_exempt = [\"127.0.0.1\"]\n{edges}{metrics}{extra_config}"
        );
        let key_of = |line: &str| line.split_once('=').map(|(k, _)| k.trim().to_owned());
        let overridden: Vec<String> = extra.lines().filter_map(key_of).collect();
        let mut cfg: String = std::fs::read_to_string(&cfg_path)
            .unwrap()
            .lines()
            .filter(|l| !key_of(l).is_some_and(|k| overridden.contains(&k)))
            .map(|l| format!("{l}\n"))
            .collect();
        cfg.push_str(&extra);
        cfg.push('\n');
        std::fs::write(&cfg_path, cfg).unwrap();

        // The device: a real sshd on loopback that trusts the broker's device key.
        let _ = std::fs::create_dir_all("/run/sshd");
        let host_key = root.join("sshd_host_ed25519");
        keygen(&host_key, "device-host");
        let device_key = root.join("broker_device_key");
        keygen(&device_key, "postern-device-credential");
        let authorized = root.join("authorized_keys");
        std::fs::copy(device_key.with_extension("pub"), &authorized).unwrap();
        let sshd_port = free_port();
        let sftp = [
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("internal-sftp");
        // The device's shells start in a home of their own: the machine account's start-up files
        // (a version manager's rehash lock, say) must not slow or break a device login.
        let device_home = root.join("device-home");
        std::fs::create_dir_all(&device_home).unwrap();
        let sshd_config = root.join("sshd_config");
        std::fs::write(
            &sshd_config,
            format!(
                "ListenAddress 127.0.0.1:{sshd_port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nUsePAM no\nStrictModes no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin yes\nAllowTcpForwarding yes\nSubsystem sftp {sftp}\nLogLevel ERROR\n\
                 SetEnv HOME={}\n",
                host_key.display(),
                authorized.display(),
                device_home.display()
            ),
        )
        .unwrap();
        let sshd = Command::new(need("sshd"))
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&sshd_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sshd");
        wait_for_port(sshd_port, "sshd");
        let device_login = String::from_utf8_lossy(&run(Command::new("id").arg("-un")).stdout)
            .trim()
            .to_owned();

        let askpass = root.join("askpass.sh");
        let code_file = root.join("code");
        std::fs::write(
            &askpass,
            format!("#!/bin/sh\ncat '{}'\n", code_file.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut w = World {
            dir,
            data,
            broker_port: 0,
            web_url: String::new(),
            sshd_port,
            broker: None,
            sshd,
            broker_log: Arc::new(Mutex::new(String::new())),
            known_hosts: root.join("known_hosts"),
            askpass,
            code_file,
            device_login,
            sshd_host_pub: host_key.with_extension("pub"),
        };
        for site in ["site-a", "site-b"] {
            w.ok(&["site", "add", site, "--region", "north"]);
            w.add_device(&format!("{site}/dev"));
        }
        w.ok(&[
            "function",
            "add",
            "shell-only",
            "--allow",
            "shell",
            "--max-window",
            "8h",
        ]);
        w.ok(&[
            "function",
            "add",
            "maint",
            "--allow",
            "shell,exec",
            "--max-window",
            "8h",
        ]);
        let full = format!("shell,exec,sftp,forward:{forward_port}");
        w.ok(&[
            "function",
            "add",
            "full",
            "--allow",
            &full,
            "--max-window",
            "8h",
        ]);
        w.start_broker();
        w
    }

    pub fn start_broker(&mut self) {
        self.start_broker_under(&[]);
    }

    /// Starts the broker under a wrapper command (e.g. `prlimit --nofile=64:64`).
    pub fn start_broker_under(&mut self, wrapper: &[&str]) {
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(need(prog));
                c.args(args).arg(postern_bin());
                c
            }
            None => Command::new(postern_bin()),
        };
        cmd.envs(S3_TEST_ENV);
        let mut child = cmd
            .args([
                "serve",
                "--ssh",
                "127.0.0.1:0",
                "--web",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(&self.data)
            .env("POSTERN_LOG", "info,russh=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting postern serve");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = self.broker_log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("postern: web UI for approvers on ") {
                        self.web_url = url.trim().to_owned();
                    }
                    if let Some(addr) = line.strip_prefix("postern: listening for vendors on ") {
                        break addr
                            .rsplit_once(':')
                            .and_then(|(_, p)| p.parse::<u16>().ok())
                            .expect("port");
                    }
                }
                _ => panic!(
                    "postern serve exited early:\n{}",
                    self.broker_log.lock().unwrap()
                ),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        self.broker_port = port;
        self.broker = Some(child);
        let host = std::fs::read_to_string(self.data.join("keys/host_ed25519.pub")).unwrap();
        std::fs::write(
            &self.known_hosts,
            format!("[127.0.0.1]:{port} {}", host.trim()),
        )
        .unwrap();
    }

    /// Kills the broker with SIGKILL (no chance to close anything) and reaps it.
    /// The broker's process id, while it runs.
    pub fn broker_pid(&self) -> Option<u32> {
        self.broker.as_ref().map(|c| c.id())
    }

    pub fn kill_broker(&mut self) {
        if let Some(mut b) = self.broker.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
    }

    /// Resident memory of the broker process, in bytes (Linux /proc).
    pub fn broker_rss(&self) -> u64 {
        let pid = self.broker.as_ref().map(Child::id).expect("broker running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS")
    }

    /// Runs a postern CLI command against this data dir.
    pub fn postern(&self, args: &[&str]) -> Output {
        run(Command::new(postern_bin())
            .envs(S3_TEST_ENV)
            .args(args)
            .arg("--data")
            .arg(&self.data))
    }

    /// Runs a postern command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.postern(args);
        assert!(
            out.status.success(),
            "postern {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds a vendor with a key and a certificate signed by the broker's CA.
    pub fn vendor(&self, name: &str, extra: &[&str]) -> Vendor {
        self.vendor_with_cert(name, extra, &[])
    }

    /// Like [`World::vendor`], with extra `vendor cert` arguments (validity).
    pub fn vendor_with_cert(&self, name: &str, extra: &[&str], cert_extra: &[&str]) -> Vendor {
        let mut args = vec!["vendor", "add", name, "--json"];
        if !extra.contains(&"--org") {
            args.extend_from_slice(&["--org", "acme"]);
        }
        args.extend_from_slice(extra);
        let out: Value = serde_json::from_str(&self.ok(&args)).unwrap();
        let uri = out["otpauth"].as_str().unwrap().to_owned();
        let secret = uri
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("secret="))
            .unwrap()
            .to_owned();
        let key = self.dir.path().join(format!("{name}_ed25519"));
        keygen(&key, name);
        let pubkey = format!("{}.pub", key.display());
        let mut cert_args = vec!["vendor", "cert", name, "--pubkey", &pubkey];
        cert_args.extend_from_slice(cert_extra);
        self.ok(&cert_args);
        Vendor {
            name: name.into(),
            key,
            secret,
            next_step: Mutex::new(0),
        }
    }

    /// Adds an approver (`scope`: `--sites ...` or `--regions ...`) with their initial password and
    /// TOTP secret.
    pub fn approver(&self, name: &str, scope: &[&str]) -> Approver {
        let mut args = vec!["approver", "add", name, "--json"];
        args.extend_from_slice(scope);
        let out: Value = serde_json::from_str(&self.ok(&args)).unwrap();
        let uri = out["otpauth"].as_str().unwrap();
        let secret = uri
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("secret="))
            .unwrap()
            .to_owned();
        Approver {
            name: name.into(),
            password: out["password"].as_str().unwrap().to_owned(),
            secret,
            next_step: Mutex::new(0),
        }
    }

    /// Adds the function `emergency` (shell, exec; at most 2h) that vendors of `acme` may open at
    /// once (break-glass).
    pub fn emergency_function(&self) {
        self.ok(&[
            "function",
            "add",
            "emergency",
            "--allow",
            "shell,exec",
            "--max-window",
            "2h",
            "--emergency",
            "--orgs",
            "acme",
        ]);
    }

    /// Connects with a terminal to a function the vendor has no grant for and files a request
    /// (`duration` empty: the default); returns once the connection waits for an approver.
    pub fn file_request(&self, v: &Vendor, login: &str, reason: &str, duration: &str) -> Pty {
        let t = Duration::from_secs(15);
        let mut sh = self.shell(v, login);
        sh.expect("Reason (empty to cancel): ", t);
        sh.send(&format!("{reason}\r"));
        sh.expect("For how long?", t);
        sh.send(&format!("{duration}\r"));
        sh.expect("is waiting for an approver", t);
        sh
    }

    /// The id of the vendor's pending request, once filed.
    pub fn pending_request(&self, vendor: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows: Vec<Value> = serde_json::from_str(
                &self.ok(&["request", "list", "--status", "pending", "--json"]),
            )
            .unwrap();
            if let Some(r) = rows.iter().find(|r| r["vendor"] == vendor) {
                return r["id"].as_str().unwrap().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no pending request from {vendor}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A web client for the approvers' UI.
    pub fn web(&self) -> WebClient {
        WebClient::new(&self.web_url)
    }

    /// Grants `function` at `site` to the vendor from now for an hour; returns the grant id.
    pub fn grant(&self, vendor: &str, site: &str, function: &str) -> String {
        self.grant_window(vendor, site, function, "now", "+1h")
    }

    pub fn grant_window(
        &self,
        vendor: &str,
        site: &str,
        function: &str,
        from: &str,
        until: &str,
    ) -> String {
        self.ok(&[
            "grant",
            "add",
            "--vendor",
            vendor,
            "--site",
            site,
            "--function",
            function,
            "--from",
            from,
            "--until",
            until,
        ])
        .trim()
        .to_owned()
    }

    /// Adds another device, `SITE/NAME`, served by the same sshd as `SITE/dev` (a sibling at the
    /// site, e.g. to test that a grant for one device does not reach the other).
    pub fn add_device(&self, site_device: &str) {
        self.add_device_at(site_device, &format!("127.0.0.1:{}", self.sshd_port));
    }

    /// Adds a device reached at `addr` (e.g. through a [`Relay`]) that is the local sshd.
    pub fn add_device_at(&self, site_device: &str, addr: &str) {
        let key = self.dir.path().join("broker_device_key");
        let (addr, hk) = (addr.to_owned(), self.sshd_host_pub.display().to_string());
        let key = key.display().to_string();
        let login = self.device_login.clone();
        self.ok(&[
            "device",
            "add",
            site_device,
            "--addr",
            &addr,
            "--login",
            &login,
            "--key",
            &key,
            "--host-key",
            &hk,
        ]);
    }

    /// Common OpenSSH options for a vendor: only this key (and its certificate), the broker's pinned host key.
    pub fn ssh_args(&self, v: &Vendor) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            v.key.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            "NumberOfPasswordPrompts=1".into(),
        ]
    }

    /// A command line for `prog` (ssh, scp, sftp) answering the TOTP prompt through SSH_ASKPASS
    /// with `code`. The port option differs: ssh -p, scp/sftp -P.
    pub fn client(&self, prog: &str, v: &Vendor, code: &str) -> Command {
        std::fs::write(&self.code_file, format!("{code}\n")).unwrap();
        let mut cmd = Command::new(need(prog));
        cmd.args(self.ssh_args(v))
            .arg(if prog == "ssh" { "-p" } else { "-P" })
            .arg(self.broker_port.to_string())
            .env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null());
        cmd
    }

    /// Answers the TOTP prompt of any OpenSSH client `cmd` with `code` through SSH_ASKPASS (for
    /// commands that bring their own options, e.g. `-F` with a generated config).
    pub fn with_askpass<'c>(&self, cmd: &'c mut Command, code: &str) -> &'c mut Command {
        std::fs::write(&self.code_file, format!("{code}\n")).unwrap();
        cmd.env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
    }

    /// The known_hosts file that pins the broker's host key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// `ssh LOGIN@broker COMMAND` as the vendor, with a fresh TOTP code.
    pub fn ssh(&self, v: &Vendor, login: &str, command: &[&str]) -> Output {
        let code = v.next_code();
        let mut cmd = self.client("ssh", v, &code);
        cmd.arg(format!("{login}@127.0.0.1")).args(command);
        run(&mut cmd)
    }

    /// All audit events so far, parsed.
    pub fn audit(&self) -> Vec<Value> {
        let reader = recorder::Reader::open(&self.data.join("audit.log")).expect("audit log");
        reader
            .map(|r| r.expect("audit log record"))
            .filter_map(|r| r.json())
            .collect()
    }

    /// Waits until an audit event matching `pred` appears; returns it.
    pub fn wait_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.audit().into_iter().find(&pred) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no audit event {what}; log:\n{}",
                serde_json::to_string_pretty(&self.audit()).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `n` sessions have been sealed (a session's records, command log and seal are
    /// all written when its seal appears in the audit log).
    pub fn wait_sealed(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .audit()
            .iter()
            .filter(|e| e["event"] == "session.seal")
            .count()
            < n
        {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} sessions were sealed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_all_recorded();
    }

    /// Waits until every session sealed in the audit log is also recorded as ended in the
    /// database, with its command log (the evidence comes first; the database follows, command
    /// log before end).
    pub fn wait_all_recorded(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let sealed: Vec<String> = self
                .audit()
                .iter()
                .filter(|e| e["event"] == "session.seal")
                .filter_map(|e| e["session"].as_str().map(str::to_owned))
                .collect();
            let rows = self.sessions();
            let pending: Vec<&String> = sealed
                .iter()
                .filter(|id| {
                    !rows
                        .iter()
                        .any(|r| r["id"] == id.as_str() && !r["records"].is_null())
                })
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sealed sessions never reached the database: {pending:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sessions(&self) -> Vec<Value> {
        serde_json::from_str::<Vec<Value>>(&self.ok(&["sessions", "--json"])).unwrap()
    }

    /// Starts an interactive vendor session in a pty, answering the TOTP prompt by typing.
    pub fn shell(&self, v: &Vendor, login: &str) -> Pty {
        self.shell_to(v, login, self.broker_port, &[])
    }

    /// [`World::shell`] to another front door (an edge's) on `port`, with `extra` ssh options.
    pub fn shell_to(&self, v: &Vendor, login: &str, port: u16, extra: &[&str]) -> Pty {
        let (pty, pts) = pty_process::blocking::open().expect("pty");
        pty.resize(pty_process::Size::new(24, 80)).unwrap();
        let mut cmd = pty_process::blocking::Command::new(need("ssh"));
        cmd = cmd
            .args(extra)
            .args(self.ssh_args(v))
            .arg("-tt")
            .arg("-p")
            .arg(port.to_string())
            .arg(format!("{login}@127.0.0.1"))
            .env("TERM", "xterm")
            .env_remove("SSH_ASKPASS");
        let child = cmd.spawn(pts).expect("spawning ssh in a pty");
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let pty = Arc::new(pty);
        let reader = pty.clone();
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = drained.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = (&*reader).read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut p = Pty {
            pty,
            child,
            out,
            drained,
        };
        p.expect("TOTP code:", Duration::from_secs(10));
        let code = v.next_code();
        p.send(&format!("{code}\r"));
        p
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(b) = self.broker.as_mut() {
            let _ = b.kill();
            let _ = b.wait();
        }
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

/// A program running in a pseudo-terminal, read by a background thread.
pub struct Pty {
    pty: Arc<pty_process::blocking::Pty>,
    pub child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    /// Set when the reader has read everything the terminal got (end of file).
    drained: Arc<std::sync::atomic::AtomicBool>,
}

impl Pty {
    pub fn send(&mut self, text: &str) {
        (&*self.pty).write_all(text.as_bytes()).unwrap();
        (&*self.pty).flush().unwrap();
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits for `needle` in everything read so far.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            if Instant::now() > deadline {
                // Whether the client is still running tells a lost write from a stalled server.
                let client = match self.child.try_wait() {
                    Ok(Some(status)) => format!("the client exited ({status})"),
                    _ => "the client is still running".to_owned(),
                };
                panic!("timed out waiting for {needle:?}; {client}; terminal so far:\n{s:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the client to exit; returns how long that took. Then waits (briefly) until
    /// everything the client wrote before exiting has been read, so `screen()` is complete.
    pub fn wait_exit(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.child.try_wait().unwrap().is_some() {
                let took = start.elapsed();
                let deadline = Instant::now() + Duration::from_secs(2);
                while !self.drained.load(std::sync::atomic::Ordering::SeqCst)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return took;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "ssh did not exit within {timeout:?}; terminal:\n{}",
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client for the web UI that keeps its cookies and never follows redirects, so tests
/// see exactly what the server answers.
pub struct WebClient {
    base: String,
    client: reqwest::blocking::Client,
    cookies: Mutex<Vec<(String, String)>>,
}

/// One answer: status, `Location` (for redirects) and body.
#[derive(Debug)]
pub struct WebResponse {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub set_cookies: Vec<String>,
}

impl WebClient {
    pub fn new(base: &str) -> WebClient {
        WebClient::forwarded_for(base, None)
    }

    /// A client whose requests carry `X-Forwarded-For: ip`, as a TLS-terminating proxy adds.
    pub fn forwarded_for(base: &str, ip: Option<&str>) -> WebClient {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(ip) = ip {
            headers.insert("x-forwarded-for", ip.parse().unwrap());
        }
        WebClient {
            base: base.trim_end_matches('/').to_owned(),
            client: reqwest::blocking::Client::builder()
                .default_headers(headers)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            cookies: Mutex::new(Vec::new()),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn answer(&self, r: reqwest::blocking::Response) -> WebResponse {
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let set_cookies: Vec<String> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        {
            let mut jar = self.cookies.lock().unwrap();
            for c in &set_cookies {
                let Some((k, v)) = c.split(';').next().and_then(|kv| kv.split_once('=')) else {
                    continue;
                };
                jar.retain(|(n, _)| n != k);
                if !v.is_empty() && !c.contains("Max-Age=0") {
                    jar.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        WebResponse {
            status,
            location,
            body: r.text().unwrap_or_default(),
            set_cookies,
        }
    }

    pub fn get(&self, path: &str) -> WebResponse {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .unwrap();
        self.answer(r)
    }

    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> WebResponse {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .unwrap();
        self.answer(r)
    }

    /// Signs in with the approver's password and the next TOTP code, taking the CSRF token from
    /// the sign-in form as a browser would.
    pub fn login(&self, a: &Approver) -> WebResponse {
        self.login_with(a, &a.password.clone(), &a.next_code())
    }

    pub fn login_with(&self, a: &Approver, password: &str, code: &str) -> WebResponse {
        let form = self.get("/login");
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = csrf_of(&form.body);
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("name", &a.name),
                ("password", password),
                ("code", code),
            ],
        )
    }
}

/// The CSRF token of the first form in a page.
pub fn csrf_of(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("a form with a CSRF token") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// A TCP relay on loopback between a client and a server, that a test can freeze (stop
/// forwarding, keep the connections open: a hung peer) or sever (close every connection and
/// refuse new ones: a dead link), and then restore.
pub struct Relay {
    pub port: u16,
    state: Arc<std::sync::atomic::AtomicU8>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

const RELAY_PASS: u8 = 0;
const RELAY_FROZEN: u8 = 1;
const RELAY_SEVERED: u8 = 2;

impl Relay {
    pub fn new(target: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay listener");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(std::sync::atomic::AtomicU8::new(RELAY_PASS));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (st, cs) = (state.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if st.load(Ordering::SeqCst) == RELAY_SEVERED {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for s in [&client, &server] {
                    let _ = s.set_nodelay(true);
                    cs.lock().unwrap().push(s.try_clone().unwrap());
                }
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let st = st.clone();
                    std::thread::spawn(move || relay_copy(from, to, st));
                }
            }
        });
        Relay { port, state, conns }
    }

    /// Stops forwarding; connections stay open and silent.
    pub fn freeze(&self) {
        self.state
            .store(RELAY_FROZEN, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection and refuses new ones.
    pub fn sever(&self) {
        self.state
            .store(RELAY_SEVERED, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Forwards again (new connections after a sever; held data after a freeze).
    pub fn restore(&self) {
        self.state
            .store(RELAY_PASS, std::sync::atomic::Ordering::SeqCst);
    }
}

fn relay_copy(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    state: Arc<std::sync::atomic::AtomicU8>,
) {
    use std::sync::atomic::Ordering;
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match state.load(Ordering::SeqCst) {
            RELAY_SEVERED => break,
            RELAY_FROZEN => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            _ => {}
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl World {
    /// Stops the broker with SIGTERM (a clean shutdown) and waits for it.
    pub fn terminate_broker(&mut self) -> std::process::ExitStatus {
        let mut b = self.broker.take().expect("broker running");
        let _ = Command::new("kill")
            .args(["-TERM", &b.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = b.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = b.kill();
                panic!("the broker did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl World {
    /// `ssh LOGIN@broker echo MARKER`, retried until it prints MARKER (a broker recovering from
    /// a fault), for at most `within`.
    pub fn ssh_until_in(&self, v: &Vendor, login: &str, marker: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let o = self.ssh(v, login, &["echo", marker]);
            if String::from_utf8_lossy(&o.stdout).contains(marker) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{login} could not get in within {within:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Runs SQL as the PostgreSQL superuser the tests use (`.ci/run` starts the server).
pub fn psql(sql: &str) {
    let o = run(Command::new(need("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
        ])
        .arg(sql));
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two broker nodes sharing one PostgreSQL database, each with its own data directory (host key,
/// vendor CA, seal key, recordings, audit log); the only key copied is the master key of the
/// database's secrets, which every node sharing it needs. Node B is set up
/// against a scratch database (the directory is already in the shared one), then joined.
pub struct TwoNodes {
    pub a: World,
    pub b: World,
    // Dropped after the nodes.
    _root: tempfile::TempDir,
    _shared: PgDb,
    _scratch: PgDb,
}

impl TwoNodes {
    pub fn new(tag: &str, warn_before: &str) -> TwoNodes {
        TwoNodes::with_config(tag, warn_before, "")
    }

    /// Two nodes with `extra` in both configurations.
    pub fn with_config(tag: &str, warn_before: &str, extra: &str) -> TwoNodes {
        let shared = PgDb::new(tag);
        let scratch = PgDb::new(&format!("{tag}_scratch"));
        // One operator root certifies both nodes' seal keys.
        let root = tempfile::tempdir().unwrap();
        let root_key = root.path().join("root.key");
        let node = |name: &str, db: &PgDb| {
            World::with_root(
                9,
                warn_before,
                &format!("node = \"{name}\"\n{}\n{extra}", db.config(5432).trim_end()),
                Some(&root_key),
            )
        };
        let a = node("node-a", &shared);
        let mut b = node("node-b", &scratch);
        b.kill_broker();
        let cfg_path = b.data.join("postern.toml");
        let cfg = std::fs::read_to_string(&cfg_path).unwrap();
        assert!(cfg.contains(scratch.config(5432).trim_end()), "{cfg}");
        let joined = cfg.replace(
            scratch.config(5432).trim_end(),
            shared.config(5432).trim_end(),
        );
        std::fs::write(&cfg_path, joined).unwrap();
        // The one key every node of a database shares: the master key of its secrets.
        std::fs::copy(
            a.data.join("keys/master.key"),
            b.data.join("keys/master.key"),
        )
        .unwrap();
        b.start_broker();
        TwoNodes {
            a,
            b,
            _root: root,
            _shared: shared,
            _scratch: scratch,
        }
    }
}

/// A fresh PostgreSQL database for one test, dropped at the end.
pub struct PgDb(pub String);

impl PgDb {
    pub fn new(tag: &str) -> PgDb {
        let name = format!("postern_{tag}_{}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&format!("CREATE DATABASE {name}"));
        PgDb(name)
    }

    /// `database_url = ...` for this database, reached at `port` (5432, or a relay's).
    pub fn config(&self, port: u16) -> String {
        format!(
            "database_url = \"postgres://postgres@127.0.0.1:{port}/{}\"\n",
            self.0
        )
    }

    /// The database refuses connections and its open ones are cut (a dead control plane). The
    /// broker connects as a superuser, so a connection limit alone would not do.
    pub fn cut(&self) {
        psql(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            self.0
        ));
        psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.0
        ));
    }

    pub fn restore(&self) {
        psql(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.0));
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new(need("psql"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0))
            .status();
    }
}

/// A webhook receiver on loopback: answers 200 to every POST and keeps the JSON bodies. With
/// `hang`, it accepts connections and never answers (a dead receiver).
pub struct Receiver {
    pub url: String,
    pub bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Receiver {
    pub fn start(hang: bool) -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().take(500) {
                let Ok(mut stream) = stream else { continue };
                if hang {
                    held.push(stream);
                    continue;
                }
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice::<Value>(&body)
                {
                    kept.lock().unwrap().push(v);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Receiver { url, bodies }
    }

    pub fn wait_for(&self, event: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = self
                .bodies
                .lock()
                .unwrap()
                .iter()
                .find(|v| v["event"] == event)
            {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the webhook never received {event}; got {:?}",
                self.bodies.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What `asciinema cat` prints for the asciicast file `cast` (the real player's reading of an
/// export); fails the test if asciinema refuses the file.
pub fn asciinema_cat(cast: &Path) -> String {
    let asciinema = ["/usr/bin/asciinema", "/usr/local/bin/asciinema"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("asciinema is needed to check exports (.ci/run installs it)");
    // asciinema wants a terminal: `script` gives it one.
    let played = run(Command::new("script").args([
        "-qec",
        &format!("{asciinema} cat {}", cast.display()),
        "/dev/null",
    ]));
    assert!(
        played.status.success(),
        "asciinema cat: {}",
        String::from_utf8_lossy(&played.stderr)
    );
    String::from_utf8_lossy(&played.stdout).into_owned()
}
