//! `queue backfill`: EVE Ref's daily archives for a range of days, fetched and imported one day
//! after the other. Each day's archive is downloaded (resumably, see `download`) into the
//! download directory and imported through the [`Importer`]; a day imported whole is recorded
//! in the store (`db::backfill_days`) and skipped by later backfills. A day EVE Ref does not
//! have, or whose archive is not one, is reported with its reason and the other days go on;
//! only the store failing ends the run.

mod download;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::NaiveDate;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::import::{Importer, Reading, Summary};
use download::Fetched;

/// Where EVE Ref is and where its archives are kept.
pub struct Backfill {
    pub importer: Importer,
    pub http: reqwest::Client,
    /// EVE Ref's base URL: archives are at `{base}/killmails/{yyyy}/killmails-{yyyy-mm-dd}.tar.bz2`.
    pub base_url: String,
    /// Where archives are downloaded to, and kept.
    pub download_dir: PathBuf,
    /// Tries of a download that is cut off or answered 5xx, each resuming the last.
    pub download_attempts: u32,
    /// The wait before a download is tried again.
    pub retry_pause: Duration,
}

/// What became of one day.
#[derive(Debug)]
pub enum DayOutcome {
    /// Imported whole now, with what the import did.
    Imported(Summary),
    /// Imported whole by an earlier backfill.
    AlreadyImported,
    /// EVE Ref has no archive for the day (404).
    Missing { url: String },
    /// Not imported (wholly), and why; anything stored of it stays, and the next run tries it
    /// again.
    Failed { reason: String, imported: Summary },
}

#[derive(Debug)]
pub struct Day {
    pub day: NaiveDate,
    pub outcome: DayOutcome,
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}  ", self.day)?;
        match &self.outcome {
            DayOutcome::Imported(summary) => write!(
                f,
                "imported: {} killmails, {} stored, {} already present, {} rejected ({:.0}/s)",
                summary.read,
                summary.stored,
                summary.already_present,
                summary.rejected,
                summary.per_second()
            ),
            DayOutcome::AlreadyImported => write!(f, "skipped: imported whole before"),
            DayOutcome::Missing { url } => write!(f, "missing upstream: {url} answered 404"),
            DayOutcome::Failed { reason, imported } => {
                write!(f, "failed: {reason}")?;
                if imported.stored > 0 {
                    write!(f, " ({} stored before it failed)", imported.stored)?;
                }
                Ok(())
            }
        }
    }
}

/// What a backfill did: each day, and the killmails over all of them.
#[derive(Debug, Default)]
pub struct BackfillSummary {
    pub days: Vec<Day>,
    pub killmails: Summary,
    pub elapsed: Duration,
    pub interrupted: bool,
}

impl BackfillSummary {
    fn count(&self, of: impl Fn(&DayOutcome) -> bool) -> usize {
        self.days.iter().filter(|d| of(&d.outcome)).count()
    }

    /// Days that were neither imported nor imported before.
    pub fn not_imported(&self) -> usize {
        self.count(|o| matches!(o, DayOutcome::Missing { .. } | DayOutcome::Failed { .. }))
    }
}

impl fmt::Display for BackfillSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let imported = self.count(|o| matches!(o, DayOutcome::Imported(_)));
        let skipped = self.count(|o| matches!(o, DayOutcome::AlreadyImported));
        let missing = self.count(|o| matches!(o, DayOutcome::Missing { .. }));
        let failed = self.count(|o| matches!(o, DayOutcome::Failed { .. }));
        writeln!(f, "days imported:    {imported}")?;
        writeln!(f, "days skipped:     {skipped}")?;
        writeln!(f, "days missing:     {missing}")?;
        writeln!(f, "days failed:      {failed}")?;
        for day in &self.days {
            if matches!(
                day.outcome,
                DayOutcome::Missing { .. } | DayOutcome::Failed { .. }
            ) {
                writeln!(f, "  {day}")?;
            }
        }
        let mut killmails = self.killmails.clone();
        killmails.elapsed = self.elapsed;
        killmails.interrupted = self.interrupted;
        write!(f, "{killmails}")
    }
}

/// A day made ready to import: its archive downloaded and being read, or what kept it from
/// being imported.
enum Ready {
    Reading { archive: PathBuf, reading: Reading },
    Not(DayOutcome),
}

impl Backfill {
    /// Backfills every day from `from` to `to`, both included, in order; `on_day` is told of
    /// each as it ends. While a day is stored, the next is downloaded, and once the day is
    /// wholly read, the next is read (decompressed on every core, parsed) ahead of the store,
    /// so the store does not wait between days, and the two days' decompression never share
    /// the cores. `progress` shows the day being stored. Fails only when the store or the
    /// download directory does; once `shutdown` is cancelled, the batch in hand is finished
    /// and the remaining days left.
    pub async fn run(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        progress: &ProgressBar,
        shutdown: &CancellationToken,
        mut on_day: impl FnMut(&Day),
    ) -> anyhow::Result<BackfillSummary> {
        anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
        let started = Instant::now();
        tokio::fs::create_dir_all(&self.download_dir)
            .await
            .with_context(|| format!("creating {}", self.download_dir.display()))?;
        let done = db::backfill_days::imported(&self.importer.pool, from, to)
            .await
            .context("reading which days were backfilled")?;
        let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
        let mut summary = BackfillSummary::default();
        let mut ahead: Option<(NaiveDate, Ready)> = None;
        for (at, &day) in days.iter().enumerate() {
            if shutdown.is_cancelled() {
                summary.interrupted = true;
                break;
            }
            let outcome = if done.contains(&day) {
                DayOutcome::AlreadyImported
            } else {
                let ready = match ahead.take() {
                    Some((d, ready)) if d == day => ready,
                    _ => {
                        progress.set_prefix(day.to_string());
                        progress.set_message("downloading");
                        let fetched = self.fetch(day, shutdown).await;
                        self.start_reading(fetched)
                    }
                };
                let read_out = match &ready {
                    Ready::Reading { reading, .. } => Some(reading.read_out()),
                    Ready::Not(_) => None,
                };
                let next = days[at + 1..].iter().find(|d| !done.contains(d));
                let (outcome, next) =
                    tokio::join!(self.import(day, ready, progress, shutdown), async {
                        let next = *next?;
                        let fetched = self.fetch(next, shutdown).await;
                        if let Some(read_out) = read_out {
                            read_out.await;
                        }
                        Some((next, self.start_reading(fetched)))
                    });
                ahead = next;
                outcome?
            };
            let day = Day { day, outcome };
            if let DayOutcome::Imported(s) | DayOutcome::Failed { imported: s, .. } = &day.outcome {
                summary.interrupted |= s.interrupted;
                add(&mut summary.killmails, s, self.importer.max_reasons);
            }
            on_day(&day);
            summary.days.push(day);
            if summary.interrupted {
                break;
            }
        }
        if let Some((_, Ready::Reading { reading, .. })) = ahead {
            reading.abandon().await;
        }
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    /// Downloads `day`'s archive: its path, or why the day cannot be imported.
    async fn fetch(
        &self,
        day: NaiveDate,
        shutdown: &CancellationToken,
    ) -> Result<PathBuf, DayOutcome> {
        let url = archive_url(&self.base_url, day);
        let dest = self
            .download_dir
            .join(format!("killmails-{}.tar.bz2", day.format("%Y-%m-%d")));
        let fetching = tokio::select! {
            fetched = download::fetch(
                &self.http, &url, &dest, self.download_attempts, self.retry_pause) => fetched,
            () = shutdown.cancelled() => {
                return Err(DayOutcome::Failed {
                    reason: "interrupted while downloading".into(),
                    imported: Summary { interrupted: true, ..Summary::default() },
                });
            }
        };
        match fetching {
            Ok(Fetched::File(path)) => Ok(path),
            Ok(Fetched::Missing) => Err(DayOutcome::Missing { url }),
            Err(reason) => Err(DayOutcome::Failed {
                reason,
                imported: Summary::default(),
            }),
        }
    }

    /// Starts reading a downloaded archive.
    fn start_reading(&self, fetched: Result<PathBuf, DayOutcome>) -> Ready {
        let archive = match fetched {
            Ok(archive) => archive,
            Err(outcome) => return Ready::Not(outcome),
        };
        match self.importer.read(std::slice::from_ref(&archive)) {
            Ok(reading) => Ready::Reading { archive, reading },
            Err(error) => Ready::Not(DayOutcome::Failed {
                reason: format!("{error:#}"),
                imported: Summary::default(),
            }),
        }
    }

    /// Stores a day made ready, and records it once it is stored whole.
    async fn import(
        &self,
        day: NaiveDate,
        ready: Ready,
        progress: &ProgressBar,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<DayOutcome> {
        let (archive, reading) = match ready {
            Ready::Reading { archive, reading } => (archive, reading),
            Ready::Not(outcome) => return Ok(outcome),
        };
        progress.set_prefix(day.to_string());
        progress.set_message("importing");
        let imported = self.importer.write(reading, progress, shutdown).await?;
        if imported.interrupted {
            return Ok(DayOutcome::Failed {
                reason: "interrupted".into(),
                imported,
            });
        }
        if imported.broken_files > 0 {
            // A corrupt download is fetched again next time.
            let _ = tokio::fs::remove_file(&archive).await;
            let reason = imported
                .rejections
                .iter()
                .find(|r| r.reason.starts_with("unreadable"))
                .map_or_else(|| "the archive broke off".to_owned(), |r| r.reason.clone());
            return Ok(DayOutcome::Failed {
                reason: format!("not a whole archive, {reason} (deleted; fetched again next time)"),
                imported,
            });
        }
        db::backfill_days::record(
            &self.importer.pool,
            day,
            imported.stored + imported.already_present,
            imported.rejected,
        )
        .await
        .context("recording the day as backfilled")?;
        Ok(DayOutcome::Imported(imported))
    }
}

/// The archive of `day` on EVE Ref at `base`.
pub fn archive_url(base: &str, day: NaiveDate) -> String {
    format!(
        "{}/killmails/{}/killmails-{}.tar.bz2",
        base.trim_end_matches('/'),
        day.format("%Y"),
        day.format("%Y-%m-%d")
    )
}

/// Adds a day's counts to the run's, keeping at most `max_reasons` rejections.
fn add(total: &mut Summary, day: &Summary, max_reasons: usize) {
    total.files += day.files;
    total.broken_files += day.broken_files;
    total.read += day.read;
    total.stored += day.stored;
    total.already_present += day.already_present;
    total.queued += day.queued;
    total.rejected += day.rejected;
    let room = max_reasons.saturating_sub(total.rejections.len());
    total
        .rejections
        .extend(day.rejections.iter().take(room).cloned());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_at_eve_refs_address() {
        let day = NaiveDate::from_ymd_opt(2021, 12, 3).expect("a date");
        assert_eq!(
            archive_url("https://data.everef.net/", day),
            "https://data.everef.net/killmails/2021/killmails-2021-12-03.tar.bz2"
        );
    }
}
