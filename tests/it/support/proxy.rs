//! A TCP proxy that can go silent: [`SilentProxy::silence`] stops forwarding on the connections
//! it holds without closing them, as a half-open connection behaves (no traffic, no error);
//! connections made afterwards are forwarded again. [`SilentProxy::cut`] closes them instead
//! and refuses new ones until [`SilentProxy::restore`]: the service is down, for this test
//! only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct SilentProxy {
    pub addr: SocketAddr,
    /// Cancelled to silence the connections made since the last silence.
    current: Arc<Mutex<CancellationToken>>,
    /// Set while the service is to look down.
    down: Arc<AtomicBool>,
    accepting: JoinHandle<()>,
}

impl SilentProxy {
    /// Forwards connections to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let down = Arc::new(AtomicBool::new(false));
        let (target, tokens, is_down) =
            (target.to_owned(), Arc::clone(&current), Arc::clone(&down));
        let accepting = tokio::spawn(async move {
            // Silenced connections are kept open here until the proxy goes.
            let held = Arc::new(Mutex::new(Vec::new()));
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    continue;
                }
                let is_down = Arc::clone(&is_down);
                let silenced = tokens
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let (target, held) = (target.clone(), Arc::clone(&held));
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let went_silent = {
                        let copying = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                        tokio::select! {
                            _ = copying => false,
                            () = silenced.cancelled() => true,
                        }
                    };
                    if went_silent && !is_down.load(Ordering::SeqCst) {
                        held.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((inbound, outbound));
                    }
                });
            }
        });
        Self {
            addr,
            current,
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

    /// Closes every connection and refuses new ones: the service is down.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.silence();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// Stops forwarding on every connection open now, leaving them open.
    pub fn silence(&self) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.cancel();
        *current = CancellationToken::new();
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
    }
}
