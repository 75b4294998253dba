//! The command line: clap types for every subcommand (handlers are in `commands/`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "postern",
    version,
    about = "Just-in-time remote access broker for vendors",
    propagate_version = true
)]
pub struct Cli {
    /// Data directory (config, keys, database, recordings, audit log).
    #[arg(
        long,
        global = true,
        default_value = "./postern-data",
        env = "POSTERN_DATA"
    )]
    pub data: PathBuf,
    /// Configuration file (default: DATA/postern.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Print listings and results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a data directory: config, host key, vendor SSH CA, database.
    Init,
    /// Init, add a demo site, simulated device, vendor and grant, then serve.
    Demo {
        #[command(subcommand)]
        action: Option<DemoAction>,
        #[arg(long, default_value = "127.0.0.1:2222")]
        ssh: String,
        /// Where the approvers' web UI listens (default from config: 127.0.0.1:8080).
        #[arg(long)]
        web: Option<String>,
    },
    /// Serve vendors (SSH).
    Serve {
        /// SSH listen address (default from config: 0.0.0.0:2222).
        #[arg(long)]
        ssh: Option<String>,
        /// Web UI listen address for approvers (default from config: 127.0.0.1:8080); `off` for none.
        #[arg(long)]
        web: Option<String>,
        /// Where site edges connect (default from config: 0.0.0.0:8443); `off` for none.
        #[arg(long)]
        edge: Option<String>,
    },
    /// Vendors: named people with a certificate and a TOTP second factor.
    Vendor {
        #[command(subcommand)]
        action: VendorAction,
    },
    /// Sites.
    Site {
        #[command(subcommand)]
        action: SiteAction,
    },
    /// Site edges: add, list and revoke them (at the central); join and run one (at the site).
    Edge {
        #[command(subcommand)]
        action: EdgeAction,
    },
    /// Devices at sites, with the credential the broker logs in with.
    Device {
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// Functions: what a grant allows (channels, device login, longest window).
    Function {
        #[command(subcommand)]
        action: FunctionAction,
    },
    /// Approvers: accountable owners of sites or regions, who decide access requests.
    Approver {
        #[command(subcommand)]
        action: ApproverAction,
    },
    /// Vendors' access requests: list, approve with a window, or deny with a reason.
    Request {
        #[command(subcommand)]
        action: RequestAction,
    },
    /// Time-bound grants of a function at a site to a vendor.
    Grant {
        #[command(subcommand)]
        action: GrantAction,
    },
    /// Sessions (live and past); `sessions kill ID` closes one.
    Sessions {
        /// Only sessions still open.
        #[arg(long)]
        live: bool,
        #[command(subcommand)]
        action: Option<SessionsAction>,
    },
    /// Play a session's recording in this terminal with its timing.
    Replay {
        id: String,
        /// Playback speed factor.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause kept, in seconds.
        #[arg(long, default_value_t = 2.0)]
        idle_limit: f64,
        /// Start here (seconds into the session, as `postern commands` shows): what came before
        /// is drawn at once, so the screen is as it was.
        #[arg(long, default_value_t = 0.0)]
        at: f64,
        /// Also show the vendor's keystrokes (every key, echoed or not), escaped, on the
        /// bottom line.
        #[arg(long)]
        input: bool,
    },
    /// Webhook notifications and their delivery (queued, delivered, retrying, given up).
    Notifications,
    /// Break-glass openings and their review (approvers review them in the web UI).
    Breakglass,
    /// Access standing outside the just-in-time path (unreviewed break-glass, standing grants,
    /// overdue requests, stale credentials, unbrokered paths, edges offline past grace), oldest
    /// first, with the site's accountable approvers.
    Exceptions {
        #[arg(long)]
        site: Option<String>,
    },
    /// The operator's report for the accountable owners: unbrokered access paths and their
    /// trend, median exception age, approval latency against approval_slo, certificate issuance
    /// and propagation times, sessions per site tier, sites offline, the oldest exceptions.
    Report {
        /// The window, ending now (e.g. 30d, 7d, 24h).
        #[arg(long, default_value = "30d")]
        since: String,
    },
    /// The command log across sessions: exec lines exactly, shell commands as the device ran them,
    /// lines typed but not shown (echo off, bursts, no terminal) from the keystrokes.
    Commands {
        #[arg(long)]
        vendor: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        device: Option<String>,
        /// Only commands from this time on (RFC 3339 or relative, e.g. -24h).
        #[arg(long, allow_hyphen_values = true)]
        since: Option<String>,
        /// Regular expression the command must match.
        #[arg(long)]
        grep: Option<String>,
    },
    /// The audit log: every authentication, decision, change and session event (JSON lines with --json).
    Audit {
        /// Keep printing new events as they are written.
        #[arg(long)]
        follow: bool,
        /// Only events from this time on (RFC 3339 or relative, e.g. -1h).
        #[arg(long, allow_hyphen_values = true)]
        since: Option<String>,
    },
    /// Write a session's recording as asciicast v2 on stdout.
    Export {
        id: String,
        /// Include the vendor's keystrokes as "i" events.
        #[arg(long)]
        input: bool,
    },
    /// Recompute hash chains and seals of recordings and the audit log; non-zero exit on tampering.
    Verify {
        id: Option<String>,
        /// Check this recording file alone, with only a seal public key or a keyring and your own
        /// copy of the root public key (no data directory needed).
        #[arg(long, conflicts_with = "id", requires = "file_trust")]
        file: Option<PathBuf>,
        /// The seal public key (`postern seal-key --current` prints it).
        #[arg(long, requires = "file", group = "file_trust")]
        public_key: Option<PathBuf>,
        /// With --file: the session the file must be (a recording of another session, however
        /// well sealed, is refused).
        #[arg(long, requires = "file")]
        expect_session: Option<String>,
        /// The keyring (`postern seal-key` exports it): trusts the keys the root certified for
        /// the time the recording was sealed.
        #[arg(long, requires_all = ["file", "root"], group = "file_trust")]
        keyring: Option<PathBuf>,
        /// Your own copy of the operator's root public key (not the one on the broker): seals
        /// count only if the keyring certified their key. Without it, the root pinned in the data
        /// directory is used, and the output says so.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Check the audit log against these shipped checkpoints (a file or an http(s) URL of
        /// JSON lines, as `checkpoints export` writes); without it, against the database's (a hint).
        #[arg(long, conflicts_with = "file")]
        checkpoints: Option<String>,
    },
    /// Export the seal keyring: every certified seal key with its window, revocations and
    /// rotations (with --current, only the key sealing now).
    SealKey {
        #[arg(long)]
        current: bool,
    },
    /// Seal-key trust: the operator's root key, certificates, revocations and rotation.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The vendor CAs every node trusts: list, rotate (a new CA signs from now on), retire.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Signed checkpoints of the audit log's head, as shipped off the host.
    Checkpoints {
        #[command(subcommand)]
        action: CheckpointsAction,
    },
    /// Ways into devices that are not Postern's: foreign keys in the device login's
    /// authorized_keys, keys in `scan_paths` files, listening `scan_ports`; stored with first and
    /// last seen. `--list` shows the open ones; `--remove`/`--all-at` take foreign keys out.
    Scan {
        /// Only the devices at this site.
        #[arg(long, conflicts_with_all = ["list", "remove", "all_at"])]
        site: Option<String>,
        /// The open unbrokered paths and their age (from earlier scans; no device is contacted).
        #[arg(long, conflicts_with_all = ["remove", "all_at"])]
        list: bool,
        /// Remove the key with this fingerprint from every device login's authorized_keys where
        /// a scan found it (never Postern's own key).
        #[arg(long, conflicts_with = "all_at")]
        remove: Option<String>,
        /// Remove every foreign key from this device login's authorized_keys (SITE/DEVICE).
        #[arg(long)]
        all_at: Option<String>,
        /// Devices scanned at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Run a fleet of simulated devices on loopback (for tests, demos and benchmarks).
    Simulate {
        #[arg(long, default_value_t = 10)]
        sites: usize,
        /// Devices per site.
        #[arg(long, default_value_t = 1)]
        devices: usize,
        /// The public key the devices accept (the broker's device credential).
        #[arg(long)]
        authorized_key: PathBuf,
        /// Where to write the enrolment list (for `postern device import`).
        #[arg(long)]
        out: PathBuf,
        /// Where the devices' logins have their homes, one per SITE/DEVICE, each with the
        /// `.ssh/authorized_keys` that decides who may log in (default: OUT with extension
        /// `.homes`). Kept across runs, so rotated keys stay rotated.
        #[arg(long)]
        homes: Option<PathBuf>,
        /// A cheap scripted shell instead of a real one in a pty (for scale runs).
        #[arg(long)]
        scripted: bool,
    },
    /// Benchmark only: open many vendor sessions in-process (fresh vendors with grants, written
    /// into the data dir) and hold them.
    #[command(hide = true)]
    BenchLoad {
        /// The broker's SSH address.
        #[arg(long)]
        broker: std::net::SocketAddr,
        /// SITE/DEVICE:FUNCTION every session opens.
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 100)]
        sessions: usize,
        /// Sessions being set up at once.
        #[arg(long, default_value_t = 32)]
        parallel: usize,
        /// Seconds to hold the sessions open once all are up.
        #[arg(long, default_value_t = 10)]
        hold: u64,
        /// Each held session runs a command every this many seconds (0: idle).
        #[arg(long, default_value_t = 0.0)]
        every: f64,
        /// Seconds between the lines that count commands answered (with --every).
        #[arg(long, default_value_t = 10)]
        report: u64,
        /// With --every: only this many sessions type; the others stay idle (0: all type).
        #[arg(long, default_value_t = 0)]
        typists: usize,
    },
    /// Benchmark only: register, join and run many site edges in one process (sites and edges
    /// are written into the data dir).
    #[command(hide = true)]
    BenchEdges {
        /// The central's edge listener.
        #[arg(long)]
        central: String,
        #[arg(long, default_value_t = 100)]
        edges: usize,
        /// Edge and site names are PREFIX-0000, PREFIX-0001, ...
        #[arg(long, default_value = "bench-edge")]
        prefix: String,
        /// Where the edges keep their keys and certificates (one directory each).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run a simulated device (an SSH server with a real shell) on loopback.
    #[command(hide = true)]
    DeviceSim {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        host_key: PathBuf,
        #[arg(long)]
        authorized_key: PathBuf,
        /// The login's home: its `.ssh/authorized_keys` decides who may log in (made from
        /// --authorized-key if missing).
        #[arg(long)]
        home: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum CheckpointsAction {
    /// Print the checkpoints the database holds as JSON lines (keep them off this host).
    Export {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DemoAction {
    /// Print the demo vendor's current TOTP code (or the demo approver's, with --approver).
    Code {
        #[arg(long)]
        approver: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// The operator's root key, which certifies seal keys. Make it off the broker.
    Root {
        #[command(subcommand)]
        action: RootAction,
    },
    /// Copy a root public key into DATA/keys/root.pub, for the broker's start-up check.
    Pin { root_pub: PathBuf },
    /// Certify this node's seal key with the root key for a validity window.
    Certify {
        /// The root private key file (`postern keys root init` made it).
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = "365d")]
        valid_for: String,
        /// Start of validity (default: now). Earlier covers sessions already sealed with the key.
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
    },
    /// Revoke a seal key: its seals made at or after --at are no longer trusted.
    Revoke {
        key_id: String,
        #[arg(long)]
        root: PathBuf,
        /// From when (default: now; RFC 3339 or relative, e.g. -2d).
        #[arg(long, allow_hyphen_values = true)]
        at: Option<String>,
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
    },
    /// A new seal key, certified; the old one hands over in a record both keys sign, and its
    /// certificate ends after --overlap (restart the broker before then).
    Rotate {
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = "365d")]
        valid_for: String,
        #[arg(long, default_value = "1h")]
        overlap: String,
    },
    /// A new master key for the database's secrets: the data keys are re-wrapped under it and
    /// running nodes keep working. Replaces DATA/keys/master.key in place; with
    /// `master_key_file` set, give --out and install the new file there yourself.
    RotateMaster {
        /// Where to write the new master key (0600, must not exist).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RootAction {
    /// Make a root key: private key at OUT (0600), public key at OUT.pub.
    Init {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum VendorAction {
    /// Add a vendor person; prints their TOTP enrolment URI once.
    Add {
        name: String,
        #[arg(long)]
        org: String,
        /// Access ends at this date or time.
        #[arg(long, allow_hyphen_values = true)]
        contract_end: Option<String>,
    },
    /// Sign an OpenSSH user certificate for a vendor's public key.
    Cert {
        name: String,
        #[arg(long)]
        pubkey: PathBuf,
        #[arg(long, default_value = "90d")]
        validity: String,
        /// Start of validity (default: now, less a minute for clock skew).
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// Leave out `permit-pty`: no terminal (exec, sftp and scp only).
        #[arg(long)]
        no_pty: bool,
        /// Leave out `permit-port-forwarding`: no `ssh -L`.
        #[arg(long)]
        no_port_forwarding: bool,
    },
    /// Print a one-time enrolment code: the vendor runs `ssh -i KEY enroll:CODE@broker` to get a
    /// certificate for KEY and their TOTP enrolment.
    Invite {
        name: String,
        /// How long the code stays usable (default: `invite_ttl`, 24h).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Disable a vendor: revokes their grants and closes their live sessions.
    Disable {
        name: String,
    },
    List,
    /// A vendor's certificates: serial, key fingerprint, validity, revoked.
    Certs {
        name: String,
    },
    /// Revoke one certificate (or all) of a vendor: refused at the next login on every node,
    /// and live sessions authenticated with it close within a second.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["serial", "all"])))]
    RevokeCert {
        name: String,
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Change a vendor's organisation or contract end; live sessions end at the new contract end.
    Update {
        name: String,
        #[arg(long)]
        org: Option<String>,
        /// Access ends at this date or time; `none` for no contract end.
        #[arg(long, allow_hyphen_values = true, required_unless_present = "org")]
        contract_end: Option<String>,
    },
    /// Enable a disabled vendor (their revoked grants stay revoked).
    Enable {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaAction {
    /// Every registered vendor CA: fingerprint, node, since, retired, and which one signs here.
    List,
    /// A new vendor CA signs this node's certificates from now on; the old one stays trusted
    /// until retired.
    Rotate,
    /// Stop trusting a vendor CA on every node and revoke every certificate it signed.
    Retire { fingerprint: String },
}

#[derive(Subcommand, Debug)]
pub enum EdgeAction {
    /// Register an edge for sites; prints its one-time join token (it pins the edge CA).
    Add {
        name: String,
        /// The sites it serves (comma-separated; each served by one edge at most).
        #[arg(long, value_delimiter = ',', required = true)]
        sites: Vec<String>,
        #[arg(long)]
        region: Option<String>,
        /// How long each of its certificates is valid (renewed by the edge at two thirds).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How long the join token works.
        #[arg(long, default_value = "24h")]
        token_ttl: String,
    },
    /// The edges: sites, online or offline, since when, address, certificate expiry.
    List,
    /// Cut an edge off: its certificate is refused from now on and its link is closed.
    Revoke { name: String },
    /// At the site: join the central with the token `edge add` printed (kept in DATA/edge/).
    Join {
        /// The central's edge listener, HOST:PORT.
        #[arg(long)]
        central: String,
        #[arg(long)]
        token: String,
    },
    /// At the site: keep the link to the central up (reconnecting by itself), serving its sites.
    Run {
        /// Also serve vendors at the site on this address (`ssh VENDOR:SITE/DEVICE@edge`), from
        /// the central's signed policy, also while the link is down.
        #[arg(long, value_name = "ADDR")]
        ssh_listen: Option<String>,
        /// With --ssh-listen: at most this much evidence waits for the central (`10GiB`,
        /// `500MiB`, bytes); past it new sessions at the site are refused until it drains.
        #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = parse_size)]
        buffer_max: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum SiteAction {
    Add {
        site: String,
        #[arg(long)]
        region: Option<String>,
    },
    List,
}

/// Which devices: one (SITE/DEVICE), every device at a site, or every device.
#[derive(clap::Args, Debug)]
pub struct Devices {
    /// SITE/DEVICE
    #[arg(required_unless_present_any = ["site", "all"], conflicts_with_all = ["site", "all"])]
    pub target: Option<String>,
    /// Every device at this site.
    #[arg(long, conflicts_with = "all")]
    pub site: Option<String>,
    /// Every device.
    #[arg(long)]
    pub all: bool,
}

#[derive(Subcommand, Debug)]
pub enum DeviceAction {
    /// Add many devices from a list (`site,device,addr,host_key` per line, as `postern simulate`
    /// writes), with one credential; missing sites are added.
    Import {
        file: PathBuf,
        #[arg(long)]
        login: String,
        /// OpenSSH private key the broker logs in with.
        #[arg(long)]
        key: PathBuf,
        /// Region for sites that do not exist yet.
        #[arg(long)]
        region: Option<String>,
    },
    /// Add a device: SITE/DEVICE, its SSH address, and the broker's credential for it.
    Add {
        target: String,
        #[arg(long)]
        addr: String,
        #[arg(long)]
        login: String,
        /// OpenSSH private key the broker logs in with.
        #[arg(long, conflicts_with = "password_file")]
        key: Option<PathBuf>,
        /// File holding the password the broker logs in with.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// The device's SSH host key to pin (default: fetched now and pinned; check its fingerprint).
        #[arg(long)]
        host_key: Option<PathBuf>,
        /// With --password-file: the command that changes the login's password when it is
        /// rotated; `{login}` and `{password}` are filled in (see `device rotate-command`).
        #[arg(long, requires = "password_file")]
        rotate_command: Option<String>,
        /// The device's web UI, for functions that allow web:PORT: https://HOST:PORT (or
        /// http://HOST:PORT for a device without TLS).
        #[arg(long)]
        web: Option<String>,
        /// The web UI's certificate (PEM) to pin (default: fetched now and pinned; check its
        /// fingerprint).
        #[arg(long, requires = "web")]
        web_cert: Option<PathBuf>,
        /// For a web UI behind HTTP basic auth: the user Postern signs in as (the vendor never
        /// sees the credential).
        #[arg(long, requires = "web_password_file", requires = "web")]
        web_user: Option<String>,
        /// File holding --web-user's password (stored sealed, like other device secrets).
        #[arg(long, requires = "web_user")]
        web_password_file: Option<PathBuf>,
    },
    List,
    /// Set (or replace) an enrolled device's web UI, its certificate pinned from a file or
    /// fetched now and printed.
    Web {
        target: String,
        /// https://HOST:PORT (or http://HOST:PORT for a device without TLS).
        #[arg(long)]
        url: String,
        /// The web UI's certificate (PEM) to pin (default: fetched now; check its fingerprint).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// For a web UI behind HTTP basic auth: the user Postern signs in as.
        #[arg(long, requires = "password_file")]
        user: Option<String>,
        /// File holding --user's password (stored sealed).
        #[arg(long, requires = "user")]
        password_file: Option<PathBuf>,
    },
    /// Set the command that rotates a password credential, run on the device over the broker's
    /// login: `{login}` and `{password}` are filled in, e.g.
    /// `echo '{login}:{password}' | sudo chpasswd`. The new password is proven by a fresh login.
    RotateCommand {
        #[command(flatten)]
        devices: Devices,
        /// The command template.
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        set: Option<String>,
        /// Remove the command (the password is then not rotated).
        #[arg(long)]
        clear: bool,
    },
    /// Rotate credentials. Keys: a new ed25519 key is installed in the login's
    /// ~/.ssh/authorized_keys, proven by a fresh login, the old key removed, then stored.
    /// Passwords: a new one is set by the device's rotate command and proven by a fresh login.
    Rotate {
        #[command(flatten)]
        devices: Devices,
        /// Log in and check each device could be rotated; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Devices rotated at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum FunctionAction {
    Add {
        name: String,
        /// Channel kinds: shell,exec,sftp,forward:PORT,...
        #[arg(long)]
        allow: String,
        /// Device account to use (default: the device's login).
        #[arg(long)]
        login: Option<String>,
        #[arg(long, default_value = "8h")]
        max_window: String,
        /// May be opened at once for pre-approved emergencies (break-glass), by vendors of --orgs.
        #[arg(long, requires = "orgs")]
        emergency: bool,
        /// Vendor organisations pre-approved to open this emergency function (comma-separated).
        #[arg(long, value_delimiter = ',', requires = "emergency")]
        orgs: Vec<String>,
        /// Rotate the device's credential after every session of this function (break-glass:
        /// one session, one credential).
        #[arg(long)]
        rotate_after_session: bool,
        /// An edge whose policy is past its offline grace (no word from the central) still
        /// opens this emergency function, as break-glass reviewed later.
        #[arg(long)]
        offline_ok: bool,
    },
    List,
    /// Change the channels a function allows or its longest window; live sessions lose channels
    /// no longer allowed, and longer grants are cut to the new window.
    Update {
        name: String,
        /// Channel kinds: shell,exec,sftp,forward:PORT,...
        #[arg(long, required_unless_present_any = ["max_window", "rotate_after_session", "offline_ok"])]
        allow: Option<String>,
        #[arg(long)]
        max_window: Option<String>,
        /// `on`: rotate the device's credential after every session of this function; `off`: not.
        #[arg(long, value_name = "on|off", value_parser = clap::builder::BoolishValueParser::new())]
        rotate_after_session: Option<bool>,
        /// `on`: edges past their offline grace still open it as break-glass; `off`: not.
        #[arg(long, value_name = "on|off", value_parser = clap::builder::BoolishValueParser::new())]
        offline_ok: Option<bool>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ApproverAction {
    /// Add an approver; prints their initial password and TOTP enrolment URI once.
    Add {
        name: String,
        /// Sites they are accountable for (comma-separated).
        #[arg(long, value_delimiter = ',', required_unless_present = "regions")]
        sites: Vec<String>,
        /// Regions they are accountable for (comma-separated).
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
    },
    /// A new password and TOTP secret (a lost phone, a leaked password); signs them out everywhere.
    Reset {
        name: String,
    },
    /// Disable an approver: signed out at once, cannot sign in or decide.
    Disable {
        name: String,
    },
    List,
    /// Replace the sites and/or regions an approver covers; takes effect at once, in open web pages too.
    Update {
        name: String,
        /// Sites they are accountable for (comma-separated; replaces the list).
        #[arg(long, value_delimiter = ',', required_unless_present = "regions")]
        sites: Option<Vec<String>>,
        /// Regions they are accountable for (comma-separated; replaces the list).
        #[arg(long, value_delimiter = ',')]
        regions: Option<Vec<String>>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RequestAction {
    List {
        /// Only requests in this state: pending, approved, denied, expired.
        #[arg(long)]
        status: Option<String>,
    },
    /// Approve: grants the function at the site for the asked duration from now, or the window given.
    Approve {
        id: String,
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        until: Option<String>,
        /// Decide as this approver: refused unless they cover the request's site.
        #[arg(long = "as", value_name = "APPROVER")]
        as_approver: Option<String>,
    },
    /// Deny, with a reason the vendor sees.
    Deny {
        id: String,
        #[arg(long, default_value = "denied by the operator")]
        reason: String,
        /// Decide as this approver: refused unless they cover the request's site.
        #[arg(long = "as", value_name = "APPROVER")]
        as_approver: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum GrantAction {
    /// Grant a vendor a function at a site for a window.
    Add {
        #[arg(long)]
        vendor: String,
        #[arg(long)]
        site: String,
        #[arg(long)]
        function: String,
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        from: String,
        #[arg(long, allow_hyphen_values = true)]
        until: String,
        #[arg(long, default_value = "operator grant")]
        reason: String,
        /// A device at the site the grant covers (repeatable, or comma-separated); without it,
        /// every device at the site.
        #[arg(long = "device", value_name = "DEVICE", value_delimiter = ',')]
        devices: Vec<String>,
    },
    List,
    /// Revoke a grant; live sessions under it close within a second.
    Revoke {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsAction {
    /// Close a live session within a second.
    Kill { id: String },
}

/// A size: bytes, or a number with K, M, G or T (KiB, MiB, GiB, TiB: powers of 1024).
fn parse_size(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 10GiB, 500MiB)"))?;
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?} is not a size (e.g. 10GiB, 500MiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}
