//! One evidence store for every node: two nodes share PostgreSQL and an S3-compatible store (a
//! real `moto_server` started by the test). A session recorded on node B is copied to the store
//! once sealed, and node A replays, exports and verifies it from there; a copy altered in the
//! store fails verification on A (the store's word is never taken).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{TwoNodes, free_port, on_path, run, wait_for_port};

/// An S3-compatible server on loopback with one bucket, stopped when dropped.
pub(crate) struct S3Server {
    child: Child,
    pub(crate) port: u16,
}

impl S3Server {
    pub(crate) fn start(bucket: &str) -> S3Server {
        let port = free_port();
        let child = Command::new(on_path("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let server = S3Server { child, port };
        wait_for_port(port, "the S3-compatible server");
        server.python(&format!("s3.create_bucket(Bucket='{bucket}')"));
        server
    }

    /// Runs `code` with `s3`, a boto3 client of this server.
    pub(crate) fn python(&self, code: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', \
             aws_access_key_id='postern-test', aws_secret_access_key='postern-test', \
             region_name='us-east-1')\n{code}\n",
            self.port
        );
        let o = run(Command::new(on_path("python3")).arg("-c").arg(script));
        assert!(
            o.status.success(),
            "python: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_session_recorded_on_one_node_is_replayed_and_verified_from_another() {
    let s3 = S3Server::start("evidence");
    let extra = format!(
        "evidence_store = \"s3://evidence/postern\"\nevidence_s3_endpoint = \"http://127.0.0.1:{}\"\n",
        s3.port
    );
    let nodes = TwoNodes::with_config("evstore", "5m", &extra);
    let (a, b) = (&nodes.a, &nodes.b);
    let alice = a.vendor("alice", &[]);
    a.grant("alice", "site-a", "maint");
    let o = b.ssh(&alice, "alice:site-a/dev", &["echo", "evidence-on-b"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("evidence-on-b"));
    let s = a
        .sessions()
        .into_iter()
        .find(|s| s["vendor"] == "alice")
        .unwrap();
    let (id, recording) = (s["id"].as_str().unwrap(), s["recording"].as_str().unwrap());
    assert_eq!(s["node"], "node-b");
    assert!(!a.data.join("recordings").join(recording).exists());

    // Node A verifies B's session from the store once B has copied it there.
    let end = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let o = a.postern(&["verify", id]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && out.contains("chain intact") {
            break out;
        }
        assert!(
            Instant::now() < end,
            "node A never read the recording: {out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(out.contains(&format!("OK     session {id}")), "{out}");
    assert!(out.contains("sealed by a trusted key"), "{out}");
    let listed =
        s3.python("print([o['Key'] for o in s3.list_objects_v2(Bucket='evidence')['Contents']])");
    assert!(
        listed.contains(&format!("postern/recordings/{recording}")),
        "{listed}"
    );
    let cast = a.ok(&["export", id]);
    assert!(cast.contains("evidence-on-b"), "{cast}");

    // A copy altered in the store is caught: A reads it again and the chain breaks.
    std::fs::remove_dir_all(a.data.join("evidence-cache")).unwrap();
    s3.python(&format!(
        "k='postern/recordings/{recording}'\nb=bytearray(s3.get_object(Bucket='evidence', Key=k)['Body'].read())\n\
         i=b.find(b'evidence-on-b')\nb[i]=ord('E')\ns3.put_object(Bucket='evidence', Key=k, Body=bytes(b))"
    ));
    let o = a.postern(&["verify", id]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains(&format!("FAILED session {id}")), "{out}");
}
