//! The web form in a real browser: headless Chromium (Debian's package, driven through
//! chromedriver's WebDriver protocol) on a phone-sized window signs in as an approver, approves a
//! request a vendor is waiting on in ssh, terminates the live session, and opens the session's
//! page, the grants and the review queue. Each page is saved as a screenshot for review, under
//! `target/tmp/web-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::World;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    shots: PathBuf,
    taken: usize,
}

impl Browser {
    fn start(width: u32, height: u32) -> Browser {
        Browser::start_with(width, height, &[], "web-screenshots")
    }

    /// A browser with further Chromium `args`, saving screenshots under `target/tmp/SHOTS/`.
    fn start_with(width: u32, height: u32, args: &[&str], shots: &str) -> Browser {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("Chromium is needed by the browser test: install chromium and chromium-driver (.ci/run does)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (package chromium-driver) is needed by the browser test");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let size = format!("--window-size={width},{height}");
        let mut chrome_args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            size.as_str(),
        ];
        chrome_args.extend_from_slice(args);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": chrome_args
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .and_then(|r| r.json())
            .expect("creating a browser session");
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused the session: {r}"))
            .to_owned();
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(shots);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            base,
            session,
            http,
            shots,
            taken: 0,
        }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let v: Value = req.send().and_then(|r| r.json()).expect("webdriver call");
        if v["value"]["error"].is_string() {
            panic!("webdriver {method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url}));
    }

    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let v: Value = self
                .http
                .post(url)
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .and_then(|r| r.json())
                .unwrap();
            if let Some(obj) = v["value"].as_object()
                && let Some(id) = obj.values().next().and_then(Value::as_str)
                && !obj.contains_key("error")
            {
                return id.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/clear"), json!({}));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({"text": text}),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", json!(null))
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's visible text (retried while a navigation replaces the page).
    fn text(&self) -> String {
        let deadline = Instant::now() + T;
        loop {
            let body = self.find("body");
            let url = format!("{}/session/{}/element/{body}/text", self.base, self.session);
            let v: Value = self.http.get(url).send().and_then(|r| r.json()).unwrap();
            if let Some(t) = v["value"].as_str() {
                return t.to_owned();
            }
            assert!(Instant::now() < deadline, "page text unreadable: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the page to show `needle` by itself (its scripts), without reloading it.
    fn wait_text_here(&self, needle: &str) {
        self.wait_for(needle, false);
    }

    /// Waits until the page's text contains `needle`, reloading every half second.
    fn wait_text(&self, needle: &str) {
        self.wait_for(needle, true);
    }

    fn wait_for(&self, needle: &str, reload: bool) {
        let deadline = Instant::now() + T;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "page {} never showed {needle:?}:\n{}",
                self.url(),
                self.text()
            );
            match reload {
                true => {
                    std::thread::sleep(Duration::from_millis(500));
                    self.call("POST", "/refresh", json!({}));
                }
                false => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Saves a PNG of the window; returns its path.
    fn screenshot(&mut self, name: &str) -> PathBuf {
        let b64 = self.call("GET", "/screenshot", json!(null));
        let png = decode_base64(b64.as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        self.taken += 1;
        let path = self.shots.join(format!("{:02}-{name}.png", self.taken));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (what WebDriver returns screenshots in).
fn decode_base64(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn an_approver_works_the_web_form_in_chromium() {
    let w = World::new(9, "5m");
    w.emergency_function();
    let olga = w.approver("olga", &["--sites", "site-a"]);
    // A phone-sized window: the form must work there.
    let mut b = Browser::start(412, 915);

    b.go(&format!("{}/login", w.web_url));
    b.find("input[name=name]");
    b.screenshot("sign-in");
    b.fill("input[name=name]", "olga");
    b.fill("input[name=password]", &olga.password);
    b.fill("input[name=code]", &olga.next_code());
    b.click("form button[type=submit]");
    b.wait_text("Pending requests");
    assert!(b.url().ends_with("/requests"), "{}", b.url());

    // A vendor asks from ssh; the request shows up; approve it with a 20-minute window.
    let rae = w.vendor("rae", &[]);
    let mut sh = w.file_request(
        &rae,
        "rae:site-a/dev:maint",
        "camera offline since 02:00",
        "1h",
    );
    b.wait_text("camera offline since 02:00");
    b.screenshot("pending-request");
    b.fill("input[name=duration]", "20m");
    b.click("button.approve");
    sh.expect("granted by olga", T);
    sh.expect("access until", T);
    sh.send("echo from-the-browser-$((40+2))\r");
    sh.expect("from-the-browser-42", T);
    b.wait_text("No requests are waiting for you");
    b.screenshot("request-approved");

    b.go(&format!("{}/grants", w.web_url));
    b.wait_text("rae");
    b.screenshot("grants");

    // Terminate the live session with its button.
    b.go(&format!("{}/sessions", w.web_url));
    b.wait_text("Live sessions");
    b.find("section.live button.deny");
    b.screenshot("live-session");
    let start = Instant::now();
    b.click("section.live button.deny");
    sh.wait_exit(Duration::from_secs(10));
    let took = start.elapsed();
    eprintln!("browser terminate: vendor ssh exited {took:?} after the click");
    assert!(took < Duration::from_secs(2), "terminate took {took:?}");
    assert!(sh.screen().contains("terminated"), "{}", sh.screen());
    b.wait_text("No sessions are open at your sites");
    b.screenshot("session-terminated");

    // The session's page: command log and replay, drawn from the recording.
    w.wait_audit("session.seal", |e| e["event"] == "session.seal");
    w.wait_all_recorded();
    b.click("ul.list a");
    b.wait_text("echo from-the-browser-$((40+2))");
    b.find("#screen");
    let screen = b.text();
    assert!(screen.contains("from-the-browser-42"), "{screen}");
    b.screenshot("session-replay");
    // Play the replay from the start: the script steps through the screens.
    b.click("#play");
    std::thread::sleep(Duration::from_millis(300));
    b.screenshot("session-replay-playing");

    // Break-glass lands in the review queue.
    let ivy = w.vendor("ivy", &[]);
    let mut sh = w.shell(&ivy, "ivy:site-a/dev:emergency");
    sh.expect("Reason for the emergency (empty to cancel): ", T);
    sh.send("freezer alarm\r");
    sh.expect("For how long?", T);
    sh.send("\r");
    sh.expect("access until", T);
    b.go(&format!("{}/review", w.web_url));
    b.wait_text("freezer alarm");
    b.screenshot("review-queue");
    b.fill("input[name=note]", "alarm confirmed with the store");
    b.click("button.approve");
    b.wait_text("Nothing is waiting for review");
    b.screenshot("reviewed");
    sh.send("exit\r");
    sh.wait_exit(T);
    assert_eq!(b.taken, 10);
}

#[test]
fn a_vendor_opens_a_device_web_ui_in_chromium() {
    use crate::device_web::{WebDevice, enrol_cam_with, sign_in_link, web_world};
    let (w, port) = web_world();
    // The UI needs basic auth, which Postern signs in with: the vendor never sees it.
    let cam = WebDevice::start_with(&w, "cam-01", Some("admin:cam-secret"));
    // The device's UI links its pages by absolute paths and talks over a websocket, as device
    // UIs do.
    std::fs::write(
        cam.dir.join("index.html"),
        r#"<h1>cam-01 status</h1><a id="next" href="/settings.html">settings</a>"#,
    )
    .unwrap();
    std::fs::write(cam.dir.join("settings.html"), SETTINGS_PAGE).unwrap();
    let secret = w.dir.path().join("cam-password");
    std::fs::write(&secret, "cam-secret\n").unwrap();
    let secret = secret.display().to_string();
    let basic = [
        "--web-user",
        "admin",
        "--web-password-file",
        secret.as_str(),
    ];
    enrol_cam_with(&w, &cam, &cam.cert, &basic);
    let vic = w.vendor("vic", &[]);
    let grant = w.grant("vic", "site-a", "webui");
    let link = sign_in_link(&w, &vic);

    // Every name under the device domain is this loopback front door; its certificate is from
    // the test installation's own CA.
    let mut b = Browser::start_with(
        412,
        915,
        &[
            "--ignore-certificate-errors",
            "--host-resolver-rules=MAP devices.test 127.0.0.1, MAP *.devices.test 127.0.0.1",
        ],
        "device-web-screenshots",
    );
    b.go(&link);
    b.wait_text("Device web UIs");
    b.screenshot("device-list");
    b.click("a[href='/open/site-a/cam']");
    b.wait_text("cam-01 status");
    assert!(
        b.url()
            .starts_with(&format!("https://cam--site-a.devices.test:{port}/")),
        "{}",
        b.url()
    );
    b.screenshot("device-page");
    b.click("#next");
    b.wait_text("cam-01 settings");
    b.wait_text_here("echo: hello camera");
    b.screenshot("device-settings");

    // Revoked: the websocket is closed by Postern at once, and the next page load is refused.
    w.ok(&["grant", "revoke", &grant]);
    let revoked = Instant::now();
    b.wait_text_here("closed 1008");
    eprintln!(
        "websocket closed {:?} after the revocation",
        revoked.elapsed()
    );
    b.screenshot("device-websocket-closed");
    b.wait_text("Sign in from your terminal");
    b.screenshot("device-revoked");
    the_websocket_is_in_the_recording(&w);
}

/// A device page that opens a websocket to its own origin and shows the echo and the close.
const SETTINGS_PAGE: &str = r#"<h1>cam-01 settings</h1><p id="ws">connecting</p>
<script>
const out = document.getElementById("ws");
const s = new WebSocket("wss://" + location.host + "/ws");
s.onopen = () => s.send("hello camera");
s.onmessage = (m) => { out.textContent = m.data; };
s.onclose = (e) => { out.textContent += " / closed " + e.code; };
</script>"#;

/// The websocket's open, its messages' sizes each way and Postern's close are in the session's
/// recording, and the replay shows the request log.
fn the_websocket_is_in_the_recording(w: &World) {
    w.wait_sealed(1);
    let rows: Vec<Value> = serde_json::from_str(&w.ok(&["sessions", "--json"])).unwrap();
    let s = rows.iter().find(|r| r["device"] == "cam").unwrap();
    let id = s["id"].as_str().unwrap();
    let events = crate::device_web::web_events(w, s["recording"].as_str().unwrap());
    let has = |want: Value| {
        events
            .iter()
            .any(|e| want.as_object().unwrap().iter().all(|(k, v)| &e[k] == v))
    };
    assert!(
        has(json!({"event": "web.request", "path": "/ws", "status": 101})),
        "{events:?}"
    );
    assert!(
        has(json!({"event": "web.socket", "path": "/ws"})),
        "{events:?}"
    );
    assert!(
        has(json!({"event": "web.message", "from_device": false, "bytes": 12})),
        "{events:?}"
    );
    assert!(
        has(json!({"event": "web.message", "from_device": true, "bytes": 18})),
        "{events:?}"
    );
    assert!(
        has(json!({"event": "web.socket_close", "by": "postern", "code": 1008})),
        "{events:?}"
    );
    assert!(
        !has(json!({"event": "web.body"})),
        "bodies are off by default"
    );
    let verified = w.ok(&["verify", id]);
    assert!(
        verified.contains("ok") || verified.contains("OK"),
        "{verified}"
    );
    let replay = w.ok(&["export", id]);
    for line in [
        "GET /settings.html -> 200",
        "websocket -> text message, 12 B",
    ] {
        assert!(replay.contains(line), "{line}: {replay}");
    }
}
