//! The writer's side of an import: takes the reader's chunks as they come, publishes the records
//! without a body as `killmail.ingest` jobs, stores each batch in one transaction through
//! [`ingest::store`], announces what was new while the next batch is written, and counts it all
//! into the [`Summary`].

use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::files::{Chunk, Reader};
use super::{Announce, Importer, Rejection, Summary};
use crate::db::killmails::{Encoded, Stored};
use crate::ingest;
use crate::killmail::Received;

impl Importer {
    /// Writes what `reader` sends through `chunks` until it is done or `shutdown` is cancelled,
    /// then waits for the reader; the summary's elapsed time counts from `started`.
    pub(super) async fn write_all(
        &self,
        reader: Reader,
        mut chunks: mpsc::Receiver<Chunk>,
        started: Instant,
        progress: &ProgressBar,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Summary> {
        let mut summary = Summary::default();
        let mut announcing: Option<JoinHandle<()>> = None;
        // Time spent waiting for the reader: near zero when the store is the bottleneck.
        let mut starved = Duration::ZERO;
        let written = async {
            loop {
                let waiting = Instant::now();
                let chunk = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        summary.interrupted = true;
                        break;
                    }
                    chunk = chunks.recv() => chunk,
                };
                starved += waiting.elapsed();
                let Some(chunk) = chunk else { break };
                let position = chunk.position;
                self.write_chunk(chunk, &mut summary, &mut announcing)
                    .await?;
                progress.set_position(position);
                progress.set_message(format!(
                    "{} stored, {} already present, {} rejected",
                    summary.stored, summary.already_present, summary.rejected
                ));
            }
            anyhow::Ok(())
        }
        .await;
        // The reader stops at its next send once the receiver is gone.
        drop(chunks);
        if let Some(last) = announcing {
            let _ = last.await;
        }
        written?;
        reader.finish().await?;
        summary.elapsed = started.elapsed();
        tracing::debug!(
            elapsed_ms = summary.elapsed.as_millis(),
            waiting_for_reader_ms = starved.as_millis(),
            "import done"
        );
        Ok(summary)
    }

    async fn write_chunk(
        &self,
        chunk: Chunk,
        summary: &mut Summary,
        announcing: &mut Option<JoinHandle<()>>,
    ) -> anyhow::Result<()> {
        summary.files += chunk.files_done;
        summary.broken_files += chunk.files_broken;
        summary.read += chunk.rejections.len();
        for rejection in chunk.rejections {
            self.reject(summary, rejection);
        }
        if let Some(publisher) = &self.publisher {
            for job in chunk.jobs {
                publisher
                    .publish(&job)
                    .await
                    .with_context(|| format!("publishing killmail {}", job.killmail_id))?;
                summary.read += 1;
                summary.queued += 1;
            }
        }
        if chunk.killmails.is_empty() {
            return Ok(());
        }
        summary.read += chunk.killmails.len();
        let storing = Instant::now();
        let (killmails, stored, refused) = self.store(chunk.killmails, chunk.encoded).await?;
        tracing::debug!(
            killmails = killmails.len(),
            stored = stored.len(),
            store_ms = storing.elapsed().as_millis(),
            "batch stored"
        );
        summary.stored += stored.len();
        summary.already_present += killmails.len() - stored.len();
        for rejection in refused {
            self.reject(summary, rejection);
        }
        if let Announce::Now(announcer) = &self.announce
            && !stored.is_empty()
        {
            // Announced while the next batch is written, but one batch at a time, so events go
            // out in ingest order.
            if let Some(previous) = announcing.take() {
                let _ = previous.await;
            }
            let announcer = announcer.clone();
            *announcing = Some(tokio::spawn(async move {
                let announcing = Instant::now();
                match announcer.announce(&killmails, &stored).await {
                    Ok(announced) => tracing::debug!(
                        announced,
                        announce_ms = announcing.elapsed().as_millis(),
                        "batch announced"
                    ),
                    Err(error) => tracing::warn!(
                        error = format!("{error:#}"),
                        killmails = stored.len(),
                        "stored killmails not announced yet; worker-killmails' sweep will"
                    ),
                }
            }));
        }
        Ok(())
    }

    /// Stores a batch in one transaction. When the store refuses the data itself (a value
    /// PostgreSQL cannot hold), each killmail is stored alone and those refused are returned
    /// as rejections, so one bad killmail does not end the import.
    async fn store(
        &self,
        batch: Vec<Received>,
        encoded: Option<Encoded>,
    ) -> anyhow::Result<(Vec<Received>, Vec<Stored>, Vec<Rejection>)> {
        let encoded = encoded.unwrap_or_else(|| Encoded::new(&batch));
        let announced = self.queues_announcements();
        match ingest::store_encoded(&self.pool, &batch, encoded, announced).await {
            Ok(stored) => return Ok((batch, stored, Vec::new())),
            Err(error) if !crate::db::is_data_error(&error) => {
                return Err(error).context("storing a batch of killmails");
            }
            Err(error) => tracing::warn!(
                error = %error,
                "the store refused a batch; storing its killmails one by one"
            ),
        }
        let mut kept = Vec::with_capacity(batch.len());
        let mut stored = Vec::new();
        let mut refused = Vec::new();
        for received in batch {
            let alone = std::slice::from_ref(&received);
            match ingest::store_with(&self.pool, alone, self.queues_announcements()).await {
                Ok(new) => {
                    stored.extend(new);
                    kept.push(received);
                }
                Err(error) if crate::db::is_data_error(&error) => refused.push(Rejection {
                    place: format!("killmail {}", received.killmail.killmail_id),
                    reason: format!("the store refused it: {error}"),
                }),
                Err(error) => return Err(error).context("storing a killmail"),
            }
        }
        Ok((kept, stored, refused))
    }

    fn queues_announcements(&self) -> bool {
        !matches!(self.announce, Announce::Never)
    }

    fn reject(&self, summary: &mut Summary, rejection: Rejection) {
        tracing::debug!(place = %rejection.place, reason = %rejection.reason, "rejected");
        summary.rejected += 1;
        if summary.rejections.len() < self.max_reasons {
            summary.rejections.push(rejection);
        }
    }
}
