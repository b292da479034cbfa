//! Publishing from inside a long-running process that does not own a RabbitMQ session of its
//! own (the user-killmails handler queues `killmail.ingest` jobs; its scheduler queues
//! user-killmails jobs): a connection opened on first use, and again on the next use after a
//! publish failed, so that a broker restart costs one failed attempt, not the process.

use anyhow::Context;
use futures::future::try_join_all;
use lapin::Connection;
use tokio::sync::Mutex;

use crate::queue::{Publisher, Topology};

pub struct Outlet {
    url: String,
    /// The connection's name on the broker.
    name: String,
    topology: Topology,
    current: Mutex<Option<(Connection, Publisher)>>,
}

impl Outlet {
    pub fn new(url: &str, name: &str, topology: Topology) -> Self {
        Self {
            url: url.to_owned(),
            name: name.to_owned(),
            topology,
            current: Mutex::default(),
        }
    }

    /// Publishes every body to the topology's work queue, and returns once the broker has
    /// confirmed them all; on an error some may have been taken (a job queued twice changes
    /// nothing) and the connection is opened again next time.
    pub async fn publish_all(&self, bodies: &[Vec<u8>]) -> anyhow::Result<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        let mut current = self.current.lock().await;
        let publisher = match current.as_ref() {
            Some((_, publisher)) => publisher.clone(),
            None => {
                let (connection, publisher) =
                    Publisher::open(&self.url, &self.name, self.topology.clone()).await?;
                *current = Some((connection, publisher.clone()));
                publisher
            }
        };
        let published = try_join_all(bodies.iter().map(|body| publisher.publish_raw(body))).await;
        if let Err(error) = published {
            if let Some((connection, _)) = current.take() {
                connection.close(200, "publishing failed").await.ok();
            }
            return Err(error).with_context(|| format!("publishing to {}", self.topology.queue));
        }
        Ok(())
    }
}
