//! `queue import`: killmails from files straight into the store, for backfills. Reads EVE Ref
//! daily archives (`.tar.bz2`, `.tar`), directories of killmail JSON, `.json` files (a killmail,
//! an array of them, an R2Z2 object, a RedisQ package or a `killmail.ingest` job) and `.jsonl`
//! files (one of those per line), any of them also `.bz2`-compressed. bzip2 blocks are
//! decompressed on worker threads, one per core (`bz2`), and parsing and encoding run on a
//! blocking thread that feeds whole batches through a bounded channel, so the next batch is
//! read while the last one is written; each batch is one transaction through
//! [`ingest::store`], and what was new is announced like any other killmail. A record that
//! cannot be imported is counted and reported with its place and reason, never ending the run;
//! importing the same files again changes nothing.
//!
//! `files` finds and reads the input on its thread, `bz2` decompresses, `records` decodes each
//! record (R2Z2 objects and RedisQ packages through [`crate::zkb`], as the live feeds do), and
//! `write` stores, publishes and announces what was read and counts it into the [`Summary`].
//!
//! [`ingest::store`]: crate::ingest::store

mod bz2;
mod files;
mod records;
mod write;

pub use files::{Format, InputFile, input_files, read_killmails};

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::announce::Announcer;
use crate::queue::Publisher;
use files::{ReadSettings, Reader};

/// Killmails a transaction when history is imported (a backfill). The statistics of a history
/// batch are added once it is in (see `db::killmails::store_encoded`): each character,
/// corporation and alliance once per transaction and hour and day it appears in, so larger
/// transactions write fewer aggregate rows (see BENCHMARKS.md). Larger still
/// would hold the store's write lock longer, which live writers and revaluations wait for (about
/// half a second for 5,000 on an idle machine).
pub const HISTORY_BATCH: usize = 5000;

/// Killmails a transaction unless told: [`HISTORY_BATCH`] for history, 1,000 when what is new
/// is announced (each transaction's events go out together, so smaller ones come sooner).
pub fn default_batch(announced: bool) -> usize {
    if announced { 1000 } else { HISTORY_BATCH }
}

/// How to import, and where to.
#[derive(Clone)]
pub struct Importer {
    pub pool: PgPool,
    /// Whether and when what was new is announced.
    pub announce: Announce,
    /// Where records without a killmail body (RedisQ packages carrying only `zkb`) are sent as
    /// `killmail.ingest` jobs, for worker-killmails to fetch from ESI. Without it they are
    /// rejected.
    pub publisher: Option<Publisher>,
    /// Killmails stored per transaction.
    pub batch_size: usize,
    /// Rejections kept with their reason in the [`Summary`]; the rest are only counted.
    pub max_reasons: usize,
}

/// Whether and when an import announces the killmails it stored.
#[derive(Clone)]
pub enum Announce {
    /// After each commit, by this announcer.
    Now(Announcer),
    /// Left pending in the store's outbox, for worker-killmails' overdue sweep.
    BySweep,
    /// Never: history is not news. Stored and queryable, but nothing is queued in the outbox,
    /// so no live subscriber hears of it.
    Never,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Files read: every archive, JSON and JSONL file, those found in directories included.
    pub files: usize,
    /// Of those, files that broke off before their end (truncated or corrupt): what was read
    /// of them is imported, the rest is one rejection.
    pub broken_files: usize,
    /// Records read that claimed to be killmails: `stored + already_present + queued + rejected`.
    pub read: usize,
    pub stored: usize,
    /// Valid killmails the store already held (or that came twice in this import).
    pub already_present: usize,
    /// Records without a body, published as `killmail.ingest` jobs.
    pub queued: usize,
    pub rejected: usize,
    /// The first rejections, at most [`Importer::max_reasons`].
    pub rejections: Vec<Rejection>,
    pub elapsed: Duration,
    /// Stopped early by the shutdown token; what was committed stays.
    pub interrupted: bool,
}

impl Summary {
    pub fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.read as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.interrupted {
            writeln!(
                f,
                "interrupted: what was committed stays; run it again to finish"
            )?;
        }
        writeln!(f, "files read:       {}", self.files)?;
        if self.broken_files > 0 {
            writeln!(f, "files broken off: {}", self.broken_files)?;
        }
        writeln!(f, "killmails read:   {}", self.read)?;
        writeln!(f, "stored:           {}", self.stored)?;
        writeln!(f, "already present:  {}", self.already_present)?;
        if self.queued > 0 {
            writeln!(f, "queued for ESI:   {}", self.queued)?;
        }
        writeln!(f, "rejected:         {}", self.rejected)?;
        for rejection in &self.rejections {
            writeln!(f, "  {rejection}")?;
        }
        let unlisted = self.rejected.saturating_sub(self.rejections.len());
        if unlisted > 0 {
            writeln!(f, "  … and {unlisted} more")?;
        }
        writeln!(f, "elapsed:          {:.2} s", self.elapsed.as_secs_f64())?;
        write!(f, "rate:             {:.0} killmails/s", self.per_second())
    }
}

/// A record that could not be imported: where it was and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The file, and within it the archive member, line or array item.
    pub place: String,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.reason)
    }
}

/// Input being read ahead of the store: its reader thread started, its batches waiting for
/// [`Importer::write`]. Dropped unwritten, the reader stops at its next batch.
pub struct Reading {
    reader: Reader,
    chunks: mpsc::Receiver<files::Chunk>,
    /// The input's size in bytes.
    size: u64,
}

impl Reading {
    /// Resolves once everything has been read (decompressed, parsed and encoded); the last
    /// batches may still be waiting to be written.
    pub fn read_out(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reader.read_out()
    }

    /// Stops reading and waits for the reader to end.
    pub async fn abandon(self) {
        drop(self.chunks);
        if let Err(error) = self.reader.finish().await {
            tracing::debug!(error = format!("{error:#}"), "reading abandoned");
        }
    }
}

impl Importer {
    /// Imports every killmail in `paths`. Fails only when a file cannot be opened (found out
    /// before anything is written, as far as can be known in advance), or when the store or
    /// RabbitMQ fails; bad records are rejected and counted. `progress` is given the input's
    /// size in bytes and advanced as what was read is stored. Once `shutdown` is cancelled,
    /// the batch in hand is finished and the rest left.
    pub async fn import(
        &self,
        paths: &[PathBuf],
        progress: &ProgressBar,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Summary> {
        let reading = self.read(paths)?;
        self.write(reading, progress, shutdown).await
    }

    /// Starts reading `paths` (decompressing, parsing and encoding, a few batches ahead) for a
    /// later [`Importer::write`]. Fails when a file cannot be opened.
    pub fn read(&self, paths: &[PathBuf]) -> anyhow::Result<Reading> {
        let files = input_files(paths)?;
        let size = files.iter().map(|f| f.size).sum();
        let settings = ReadSettings {
            batch_size: self.batch_size.max(1),
            queue_missing: self.publisher.is_some(),
            encode: true,
        };
        let (reader, chunks) = Reader::spawn(files, settings);
        Ok(Reading {
            reader,
            chunks,
            size,
        })
    }

    /// Stores what `reading` reads, as [`Importer::import`] says; the summary's elapsed time
    /// counts from now.
    pub async fn write(
        &self,
        reading: Reading,
        progress: &ProgressBar,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Summary> {
        let started = Instant::now();
        progress.set_length(reading.size);
        progress.set_position(0);
        self.write_all(reading.reader, reading.chunks, started, progress, shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_its_counts_and_reasons() {
        let summary = Summary {
            files: 2,
            read: 10,
            stored: 7,
            already_present: 1,
            rejected: 2,
            rejections: vec![Rejection {
                place: "a.jsonl line 3".into(),
                reason: "not JSON".into(),
            }],
            elapsed: Duration::from_secs(2),
            ..Summary::default()
        };
        let text = summary.to_string();
        for line in [
            "stored:           7",
            "  a.jsonl line 3: not JSON",
            "  … and 1 more",
            "rate:             5 killmails/s",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }
}
