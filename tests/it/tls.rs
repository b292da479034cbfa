//! TLS to a managed service, here a Redis of the test's own that speaks TLS alone, with a
//! certificate signed by a CA made for the test (`openssl`): the processes trust it once told
//! to (`SSL_CERT_FILE`, as for any private CA), and refuse it otherwise.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use killreport::events::EventPublisher;
use tokio::process::{Child, Command};

use crate::support::ws::{Protocol, WsClient, graphql_url};
use crate::support::{PATIENCE, TestEnv, fixtures, free_port, readyz, wait_until};

/// A Redis on a free port of 127.0.0.1 that speaks TLS only, its certificate for `localhost`
/// signed by its own CA; stopped and removed when dropped.
struct TlsRedis {
    dir: PathBuf,
    port: u16,
    _server: Child,
}

impl TlsRedis {
    async fn start() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("killreport-tls-{id}"));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        let file = |name: &str| dir.join(name).display().to_string();
        let (ca, ca_key) = (file("ca.pem"), file("ca.key"));
        let (cert, key, request) = (file("redis.pem"), file("redis.key"), file("redis.csr"));
        let san = file("san.ext");
        std::fs::write(&san, "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
            .expect("the extensions file");
        let new_key = "-newkey rsa:2048 -nodes -days 1";
        openssl(&format!(
            "req -x509 {new_key} -subj /CN=killreport-test-CA -keyout {ca_key} -out {ca}"
        ))
        .await;
        openssl(&format!(
            "req {new_key} -subj /CN=localhost -keyout {key} -out {request}"
        ))
        .await;
        openssl(&format!(
            "x509 -req -days 1 -in {request} -CA {ca} -CAkey {ca_key} -CAcreateserial -extfile {san} -out {cert}"
        ))
        .await;
        let port = free_port();
        let server = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
            .args(["--tls-ca-cert-file", &ca, "--tls-auth-clients", "no"])
            .args(["--dir", &dir.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server (with TLS)");
        wait_until("the TLS Redis to listen", PATIENCE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Self {
            dir,
            port,
            _server: server,
        }
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `openssl` with these arguments (split at spaces: none has one).
async fn openssl(args: &str) {
    let output = Command::new("openssl")
        .args(args.split(' '))
        .output()
        .await
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn killmails_flow_through_a_redis_that_speaks_tls_with_a_certificate_the_processes_trust() {
    let redis = TlsRedis::start().await;
    let refused = tokio::time::timeout(PATIENCE, EventPublisher::connect(&redis.url(), "x"))
        .await
        .expect("an answer");
    let error = refused
        .err()
        .expect("a certificate signed by a CA nobody was told of is refused")
        .to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");

    let mut env = TestEnv::new().await;
    env.redis_url = redis.url();
    env.vars.insert("SSL_CERT_FILE".into(), redis.ca());
    let (_server, base) = env.start_server().await;
    let (status, states) = readyz(&format!("{base}/readyz")).await.expect("readyz");
    assert_eq!((status, states["redis"].as_str()), (200, Some("up")));
    let mut client = WsClient::connect(&graphql_url(&base), Protocol::TransportWs).await;
    client
        .subscribe(
            "1",
            "subscription { killmailAdded { killmailId } }",
            serde_json::json!({}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _worker = env.spawn("worker-killmails", &[]);
    let (killmail, hash) = fixtures::killmails().remove(0);
    let id = killmail.killmail_id.0.to_string();
    env.publisher()
        .await
        .publish(&fixtures::job((killmail, hash)))
        .await
        .expect("publish");
    let data = client.next_data("1").await;
    assert_eq!(data["killmailAdded"]["killmailId"], id.as_str(), "{data}");
    env.cleanup().await;
}
