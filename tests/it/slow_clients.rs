//! Slow and greedy HTTP clients: one trickling its headers, one sending nothing, one idle
//! between requests and one whose body never comes are each disconnected within the server's
//! timeouts (set short here), connections over the cap are told so, and a neighbour is served
//! in full all the while.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TestEnv;

/// A server whose header and request timeouts are a second each.
async fn server(env: &mut TestEnv, settings: &[(&str, &str)]) -> (tokio::process::Child, String) {
    env.vars
        .insert("HTTP_HEADER_TIMEOUT_SECS".into(), "1".into());
    env.vars
        .insert("HTTP_REQUEST_TIMEOUT_SECS".into(), "1".into());
    for (name, value) in settings {
        env.vars.insert((*name).into(), (*value).into());
    }
    env.start_server().await
}

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// Reads what the server sends until it closes the connection; fails after `bound`. A reset
/// counts as closed too: the server is gone either way.
async fn closed_within(socket: &mut TcpStream, bound: Duration) -> String {
    let mut received = Vec::new();
    let read = async {
        let mut buffer = [0u8; 4096];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(bound, read)
        .await
        .unwrap_or_else(|_| panic!("still open after {bound:?}"));
    String::from_utf8_lossy(&received).into_owned()
}

/// A connection the server holds: one it answers at once was refused while a connection of
/// the harness's (its readiness checks) still held a place, so it is tried again.
async fn held(base: &str) -> TcpStream {
    for _ in 0..20 {
        let mut socket = TcpStream::connect(addr(base)).await.expect("connect");
        let mut buffer = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), socket.read(&mut buffer)).await {
            Err(_) => return socket,
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("the server never held a connection of ours");
}

/// A neighbour's query, answered in full.
async fn neighbour_is_served(base: &str) {
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({"query": "{ killmails(first: 1) { edges { cursor } } }"}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["data"]["killmails"]["edges"], json!([]), "{answer}");
}

#[tokio::test]
async fn trickling_silent_idle_and_bodiless_clients_are_disconnected_in_time() {
    let mut env = TestEnv::new().await;
    let (_server, base) = server(&mut env, &[]).await;
    let bound = Duration::from_secs(4);
    let started = Instant::now();

    // Headers, a byte every 200 ms: never done.
    let trickle = async {
        let mut socket = TcpStream::connect(addr(&base)).await.expect("connect");
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let mut closed = false;
        for byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .iter()
            .cycle()
        {
            if socket.write_all(&[*byte]).await.is_err() || started.elapsed() > bound {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(closed);
        let _ = closed_within(&mut socket, bound).await;
        started.elapsed()
    };
    // Nothing at all.
    let silent = async {
        let mut socket = TcpStream::connect(addr(&base)).await.expect("connect");
        closed_within(&mut socket, bound).await;
    };
    // One request answered, then an idle keep-alive connection.
    let idle = async {
        let mut socket = TcpStream::connect(addr(&base)).await.expect("connect");
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = closed_within(&mut socket, bound).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    };
    // A POST promising a body that never comes: 408, with the reason, then closed.
    let bodiless = async {
        let mut socket = TcpStream::connect(addr(&base)).await.expect("connect");
        socket
            .write_all(
                b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .await
            .expect("write");
        let answer = closed_within(&mut socket, bound).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("the request took over 1 s"), "{answer}");
    };
    let (trickled, (), (), ()) = tokio::join!(trickle, silent, idle, bodiless);
    assert!(
        trickled < bound,
        "the trickling client was held {trickled:?}"
    );
    assert!(started.elapsed() < bound + Duration::from_secs(1));
    neighbour_is_served(&base).await;
    env.cleanup().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_answered_503_and_a_freed_place_serves_again() {
    let mut env = TestEnv::new().await;
    // Long enough a header timeout that the held connections stay for the test.
    let (_server, base) = server(
        &mut env,
        &[
            ("HTTP_MAX_CONNECTIONS", "2"),
            ("HTTP_HEADER_TIMEOUT_SECS", "30"),
        ],
    )
    .await;
    let first = held(&base).await;
    let _second = held(&base).await;
    let mut third = TcpStream::connect(addr(&base)).await.expect("connect");
    let answer = closed_within(&mut third, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("too many connections: this server holds at most 2"),
        "{answer}"
    );

    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    neighbour_is_served(&base).await;
    env.cleanup().await;
}
