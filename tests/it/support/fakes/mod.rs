//! Local fakes of the outside HTTP services, each a small axum app on 127.0.0.1:0 around a
//! state that the test sets up and reads back.

pub mod esi;
pub mod esi_entities;
pub mod esi_market;
pub mod esi_user;
pub mod everef;
pub mod r2z2;
pub mod redisq;
pub mod sso;
pub mod zkb;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use tokio::task::JoinHandle;

/// A fake service's state, shared by the test and the handlers that serve it.
pub struct Fake<S>(Arc<Mutex<S>>);

impl<S> Clone for Fake<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S: Default> Default for Fake<S> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<S: Send + 'static> Fake<S> {
    pub fn state(&self) -> MutexGuard<'_, S> {
        self.0.lock().expect("a fake's state")
    }

    /// Serves `routes` with this fake's state on a port of its own.
    async fn serve_routes(&self, routes: Router<Self>) -> Served {
        let router = routes.with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a fake");
        let addr = listener.local_addr().expect("fake address");
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("fake server");
        });
        Served { addr, task }
    }
}

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
