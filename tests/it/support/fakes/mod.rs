//! Local fakes of the outside HTTP services, each a small axum app on 127.0.0.1:0.

pub mod esi;
pub mod everef;
pub mod r2z2;
pub mod redisq;

use std::net::SocketAddr;

use axum::Router;
use tokio::task::JoinHandle;

/// A fake service; it stops serving when dropped.
pub struct Served {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Served {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(router: Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a fake");
    let addr = listener.local_addr().expect("fake address");
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("fake server");
    });
    Served { addr, task }
}
