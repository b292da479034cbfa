//! A TCP proxy between a process and one of the services, for faults that only its connections
//! suffer: [`SilentProxy::silence`] stops forwarding on the connections open now without closing
//! them, as a half-open connection behaves (no traffic, no error), and
//! [`SilentProxy::silence_carrying`] does so only to those whose client sent some bytes (a
//! channel's name); connections made afterwards are forwarded again. [`SilentProxy::cut`]
//! closes them instead and refuses new ones until [`SilentProxy::restore`]: the service is
//! down, for this test only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One forwarded connection.
#[derive(Default)]
struct Forwarded {
    /// Everything its client sent so far, up to a few KiB (enough to find a SUBSCRIBE).
    sent: Mutex<Vec<u8>>,
    silenced: CancellationToken,
}

pub struct SilentProxy {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Arc<Forwarded>>>>,
    /// Set while the service is to look down.
    down: Arc<AtomicBool>,
    accepting: JoinHandle<()>,
}

impl SilentProxy {
    /// Forwards connections to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let connections: Arc<Mutex<Vec<Arc<Forwarded>>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let (target, list, is_down) = (
            target.to_owned(),
            Arc::clone(&connections),
            Arc::clone(&down),
        );
        let accepting = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    continue;
                }
                let forwarded = Arc::new(Forwarded::default());
                lock(&list).push(Arc::clone(&forwarded));
                tokio::spawn(forward(
                    inbound,
                    target.clone(),
                    forwarded,
                    Arc::clone(&is_down),
                ));
            }
        });
        Self {
            addr,
            connections,
            down,
            accepting,
        }
    }

    /// `url` with its `host:port` replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let credentials = authority.rsplit_once('@').map(|(c, _)| format!("{c}@"));
        format!(
            "{scheme}://{}{}{path}",
            credentials.unwrap_or_default(),
            self.addr
        )
    }

    /// Stops forwarding on every connection open now, leaving them open.
    pub fn silence(&self) {
        self.silence_carrying(b"");
    }

    /// Stops forwarding on the connections open now whose client sent `bytes`, leaving them
    /// open; how many.
    pub fn silence_carrying(&self, bytes: &[u8]) -> usize {
        let mut connections = lock(&self.connections);
        connections.retain(|c| !c.silenced.is_cancelled());
        let mut silenced = 0;
        for connection in connections.iter() {
            let sent = connection
                .sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if bytes.is_empty() || sent.windows(bytes.len()).any(|w| w == bytes) {
                connection.silenced.cancel();
                silenced += 1;
            }
        }
        silenced
    }

    /// Closes every connection and refuses new ones: the service is down.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.silence();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forwards one connection until either side closes it or it is silenced; a silenced one is
/// held open for ever (closed, when the service is to look down).
async fn forward(
    inbound: TcpStream,
    target: String,
    forwarded: Arc<Forwarded>,
    down: Arc<AtomicBool>,
) {
    let Ok(outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let silenced = {
        let up = pipe(&mut client_read, &mut server_write, Some(&forwarded.sent));
        let down = pipe(&mut server_read, &mut client_write, None);
        tokio::select! {
            () = up => false,
            () = down => false,
            () = forwarded.silenced.cancelled() => true,
        }
    };
    forwarded.silenced.cancel();
    if silenced && !down.load(Ordering::SeqCst) {
        let held = (client_read, client_write, server_read, server_write);
        std::future::pending::<()>().await;
        drop(held);
    }
}

/// Copies `from` to `to` until either fails or ends, keeping the start of what passed in
/// `record`.
async fn pipe(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    record: Option<&Mutex<Vec<u8>>>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(record) = record {
            let mut sent = lock(record);
            if sent.len() < 8 * 1024 {
                sent.extend_from_slice(&buffer[..n]);
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// The `host:port` of `url`.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_owned()
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}
