//! `queue import`: killmails from files straight into the store, for backfills. Reads EVE Ref
//! daily archives (`.tar.bz2`, `.tar`), directories of killmail JSON, `.json` files (a killmail,
//! an array of them, an R2Z2 object, a RedisQ package or a `killmail.ingest` job) and `.jsonl`
//! files (one of those per line), any of them also `.bz2`-compressed. Decompressing and parsing
//! run on a blocking thread that feeds whole batches through a bounded channel, so the next
//! batch is parsed while the last one is written; each batch is one transaction through
//! [`ingest::store`], and what was new is announced like any other killmail. A record that
//! cannot be imported is counted and reported with its place and reason, never ending the run;
//! importing the same files again changes nothing.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::announce::Announcer;
use crate::ingest;
use crate::killmail::{Killmail, KillmailId, Received, Source, Zkb, check_hash};
use crate::queue::{IngestJob, Publisher};

/// Batches parsed ahead of the writer: enough to keep it busy, little enough to bound memory.
const BATCHES_AHEAD: usize = 4;

/// How to import, and where to.
#[derive(Clone)]
pub struct Importer {
    pub pool: PgPool,
    /// Announces what was new after each commit; `None` leaves it pending in the store, for
    /// worker-killmails' overdue sweep.
    pub announcer: Option<Announcer>,
    /// Where records without a killmail body (RedisQ packages carrying only `zkb`) are sent as
    /// `killmail.ingest` jobs, for worker-killmails to fetch from ESI. Without it they are
    /// rejected.
    pub publisher: Option<Publisher>,
    /// Killmails stored per transaction.
    pub batch_size: usize,
    /// Rejections kept with their reason in the [`Summary`]; the rest are only counted.
    pub max_reasons: usize,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Files read: every archive, JSON and JSONL file, those found in directories included.
    pub files: usize,
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

/// A file to read, with how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub format: Format,
    /// Wrapped in bzip2.
    pub compressed: bool,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A tar archive whose `.json` and `.jsonl` members are read, as EVE Ref packs its days.
    Tar,
    /// One JSON value.
    Json,
    /// One JSON value per line.
    JsonLines,
}

impl InputFile {
    /// Recognises a file by its name; `None` for anything else.
    pub fn recognise(path: &Path) -> Option<(Format, bool)> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".tbz2") || name.ends_with(".tbz") {
            return Some((Format::Tar, true));
        }
        let (name, compressed) = match name.strip_suffix(".bz2") {
            Some(inner) => (inner, true),
            None => (name.as_str(), false),
        };
        let format = if name.ends_with(".tar") {
            Format::Tar
        } else if name.ends_with(".json") {
            Format::Json
        } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Format::JsonLines
        } else {
            return None;
        };
        Some((format, compressed))
    }
}

/// Lists the files `paths` name, directories walked recursively in name order, and checks that
/// each can be opened, so that a mistyped path fails the import before anything is written.
/// In a directory, files of other kinds are skipped; named directly, they are an error.
pub fn input_files(paths: &[PathBuf]) -> anyhow::Result<Vec<InputFile>> {
    fn add(path: &Path, named: bool, out: &mut Vec<InputFile>) -> anyhow::Result<()> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        if meta.is_dir() {
            let mut entries = std::fs::read_dir(path)
                .with_context(|| format!("cannot read directory {}", path.display()))?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("cannot read directory {}", path.display()))?;
            entries.sort();
            for entry in entries {
                add(&entry, false, out)?;
            }
            return Ok(());
        }
        let Some((format, compressed)) = InputFile::recognise(path) else {
            anyhow::ensure!(
                !named,
                "{}: not a kind of file queue import reads (.tar.bz2, .tar, .json, .jsonl, \
                 any of them also .bz2)",
                path.display()
            );
            return Ok(());
        };
        File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        out.push(InputFile {
            path: path.to_owned(),
            format,
            compressed,
            size: meta.len(),
        });
        Ok(())
    }
    let mut out = Vec::new();
    for path in paths {
        add(path, true, &mut out)?;
    }
    Ok(out)
}

/// Reads and checks every killmail in `paths` without storing anything (for load generation);
/// records that cannot be imported are left out.
pub async fn read_killmails(paths: &[PathBuf]) -> anyhow::Result<Vec<Received>> {
    let files = input_files(paths)?;
    let (tx, mut rx) = mpsc::channel(BATCHES_AHEAD);
    let reader = tokio::task::spawn_blocking(move || read_files(&files, 1000, false, &tx));
    let mut killmails = Vec::new();
    while let Some(chunk) = rx.recv().await {
        killmails.extend(chunk.killmails);
    }
    reader.await.context("the file reader failed")??;
    Ok(killmails)
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
        let started = Instant::now();
        let files = input_files(paths)?;
        progress.set_length(files.iter().map(|f| f.size).sum());
        let (tx, mut rx) = mpsc::channel(BATCHES_AHEAD);
        let reader = {
            let batch_size = self.batch_size.max(1);
            let queue_missing = self.publisher.is_some();
            tokio::task::spawn_blocking(move || read_files(&files, batch_size, queue_missing, &tx))
        };

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
                    chunk = rx.recv() => chunk,
                };
                starved += waiting.elapsed();
                let Some(chunk) = chunk else { break };
                let position = chunk.position;
                self.write(chunk, &mut summary, &mut announcing).await?;
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
        drop(rx);
        if let Some(last) = announcing {
            let _ = last.await;
        }
        written?;
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(join) => return Err(anyhow::anyhow!("the file reader failed: {join}")),
        }
        summary.elapsed = started.elapsed();
        tracing::debug!(
            elapsed_ms = summary.elapsed.as_millis(),
            waiting_for_reader_ms = starved.as_millis(),
            "import done"
        );
        Ok(summary)
    }

    async fn write(
        &self,
        chunk: Chunk,
        summary: &mut Summary,
        announcing: &mut Option<JoinHandle<()>>,
    ) -> anyhow::Result<()> {
        summary.files += chunk.files_done;
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
        let (killmails, stored, refused) = self.store(chunk.killmails).await?;
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
        if let Some(announcer) = &self.announcer
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
    ) -> anyhow::Result<(
        Vec<Received>,
        Vec<crate::db::killmails::Stored>,
        Vec<Rejection>,
    )> {
        match ingest::store(&self.pool, &batch).await {
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
            match ingest::store(&self.pool, alone).await {
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

    fn reject(&self, summary: &mut Summary, rejection: Rejection) {
        tracing::debug!(place = %rejection.place, reason = %rejection.reason, "rejected");
        summary.rejected += 1;
        if summary.rejections.len() < self.max_reasons {
            summary.rejections.push(rejection);
        }
    }
}

/// What the reader hands the writer: a batch, and what else it met on the way.
#[derive(Default)]
struct Chunk {
    killmails: Vec<Received>,
    /// Records without a body, to publish (only when there is a publisher).
    jobs: Vec<IngestJob>,
    rejections: Vec<Rejection>,
    /// Files finished since the last chunk.
    files_done: usize,
    /// Bytes of input read up to the end of this chunk, over all files: the progress made
    /// once it is written.
    position: u64,
}

/// A decoded record.
enum Record {
    Killmail(Received),
    /// Only an id, a hash and perhaps `zkb`: the body must come from ESI.
    NeedsEsi(IngestJob),
}

/// Where in the input a record is, for its rejection.
#[derive(Clone, Copy)]
struct Place<'a> {
    file: &'a Path,
    member: Option<&'a str>,
    line: Option<usize>,
    item: Option<usize>,
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(member) = self.member {
            write!(f, " member {member}")?;
        }
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(item) = self.item {
            write!(f, " item {item}")?;
        }
        Ok(())
    }
}

/// Fills chunks on the reader's side and sends each once it holds a batch.
struct Collector<'a> {
    chunk: Chunk,
    /// Bytes of input read, files before the current one included.
    position: Arc<AtomicU64>,
    batch_size: usize,
    /// Whether records without a body are passed on as jobs, or rejected.
    queue_missing: bool,
    tx: &'a mpsc::Sender<Chunk>,
}

/// The writer has stopped (failed or interrupted): reading on is pointless.
struct WriterGone;

impl Collector<'_> {
    fn record(&mut self, place: Place<'_>, result: Result<Option<Record>, String>) {
        match result {
            Ok(None) => {}
            Ok(Some(Record::Killmail(received))) => self.chunk.killmails.push(received),
            Ok(Some(Record::NeedsEsi(job))) if self.queue_missing => self.chunk.jobs.push(job),
            Ok(Some(Record::NeedsEsi(job))) => self.reject(
                place,
                format!(
                    "no killmail body: killmail {} must be fetched from ESI (import with \
                     --queue-missing to queue it for worker-killmails)",
                    job.killmail_id
                ),
            ),
            Err(reason) => self.reject(place, reason),
        }
    }

    fn reject(&mut self, place: Place<'_>, reason: String) {
        self.chunk.rejections.push(Rejection {
            place: place.to_string(),
            reason,
        });
    }

    fn send_if_full(&mut self) -> Result<(), WriterGone> {
        if self.chunk.killmails.len() >= self.batch_size {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), WriterGone> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.position = self.position.load(Ordering::Relaxed);
        self.chunk.killmails.reserve(self.batch_size);
        self.tx.blocking_send(chunk).map_err(|_| WriterGone)
    }
}

/// The reader's side, on a blocking thread.
fn read_files(
    files: &[InputFile],
    batch_size: usize,
    queue_missing: bool,
    tx: &mpsc::Sender<Chunk>,
) -> anyhow::Result<()> {
    let mut collector = Collector {
        chunk: Chunk::default(),
        position: Arc::default(),
        batch_size,
        queue_missing,
        tx,
    };
    collector.chunk.killmails.reserve(batch_size);
    for file in files {
        match read_file(file, &mut collector) {
            Ok(()) => {}
            Err(ReadError::WriterGone) => return Ok(()),
            Err(ReadError::Open(error)) => {
                return Err(error).with_context(|| format!("cannot open {}", file.path.display()));
            }
        }
        collector.chunk.files_done += 1;
    }
    // Whether the writer is still there to take it is the writer's to report.
    let _ = collector.send();
    Ok(())
}

/// Counts the bytes read through it, for progress in terms of the input's size.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

enum ReadError {
    Open(std::io::Error),
    WriterGone,
}

impl From<WriterGone> for ReadError {
    fn from(_: WriterGone) -> Self {
        ReadError::WriterGone
    }
}

fn read_file(file: &InputFile, collector: &mut Collector<'_>) -> Result<(), ReadError> {
    let opened = File::open(&file.path).map_err(ReadError::Open)?;
    let raw = Counted {
        inner: opened,
        count: Arc::clone(&collector.position),
    };
    let reader: Box<dyn Read> = if file.compressed {
        Box::new(bzip2::read::MultiBzDecoder::new(BufReader::with_capacity(
            1 << 16,
            raw,
        )))
    } else {
        Box::new(raw)
    };
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let place = Place {
        file: &file.path,
        member: None,
        line: None,
        item: None,
    };
    // A file that breaks off part-way (a truncated or corrupt archive) loses what is left of
    // it, which the rejection says; the other files are still read.
    let broken = match file.format {
        Format::Tar => read_tar(&mut reader, place, collector)?,
        Format::Json => read_json(&mut reader, place, collector)?,
        Format::JsonLines => read_lines(&mut reader, place, collector)?,
    };
    if let Some(error) = broken {
        collector.reject(place, format!("unreadable from here on: {error}"));
    }
    Ok(())
}

/// Reads every `.json` and `.jsonl` member; returns the error that ended the archive early.
fn read_tar(
    reader: &mut impl Read,
    place: Place<'_>,
    collector: &mut Collector<'_>,
) -> Result<Option<std::io::Error>, WriterGone> {
    let mut archive = tar::Archive::new(reader);
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(error) => return Ok(Some(error)),
    };
    let mut buffer = Vec::new();
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(error) => return Ok(Some(error)),
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = match entry.path() {
            Ok(path) => path.to_string_lossy().into_owned(),
            Err(error) => return Ok(Some(error)),
        };
        let format = match InputFile::recognise(Path::new(&name)) {
            Some((format @ (Format::Json | Format::JsonLines), false)) => format,
            _ => continue,
        };
        let member = Place {
            member: Some(&name),
            ..place
        };
        buffer.clear();
        if let Err(error) = entry.read_to_end(&mut buffer) {
            collector.reject(member, format!("unreadable: {error}"));
            return Ok(Some(error));
        }
        match format {
            Format::Json => {
                decode_bytes(&buffer, member, collector);
                collector.send_if_full()?;
            }
            _ => {
                if let Some(error) = read_lines(&mut buffer.as_slice(), member, collector)? {
                    return Ok(Some(error));
                }
            }
        }
    }
    Ok(None)
}

fn read_json(
    reader: &mut impl Read,
    place: Place<'_>,
    collector: &mut Collector<'_>,
) -> Result<Option<std::io::Error>, WriterGone> {
    let mut buffer = Vec::new();
    if let Err(error) = reader.read_to_end(&mut buffer) {
        return Ok(Some(error));
    }
    decode_bytes(&buffer, place, collector);
    collector.send_if_full()?;
    Ok(None)
}

fn read_lines(
    reader: &mut impl BufRead,
    place: Place<'_>,
    collector: &mut Collector<'_>,
) -> Result<Option<std::io::Error>, WriterGone> {
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => return Ok(Some(error)),
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = Place {
            line: Some(number),
            ..place
        };
        decode_bytes(&line, at, collector);
        collector.send_if_full()?;
    }
    Ok(None)
}

/// Decodes one JSON text: a record, or an array of them.
fn decode_bytes(bytes: &[u8], place: Place<'_>, collector: &mut Collector<'_>) {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(error) => return collector.reject(place, format!("not JSON: {error}")),
    };
    match value {
        Value::Array(values) => {
            for (index, value) in values.into_iter().enumerate() {
                let at = Place {
                    item: Some(index),
                    ..place
                };
                collector.record(at, decode_record(value));
            }
        }
        value => collector.record(place, decode_record(value)),
    }
}

/// Decodes one record, whichever of the shapes killmails are passed around in it has:
/// - an ESI killmail, its hash in `killmail_hash` (EVE Ref), `hash` or `zkb.hash`;
/// - an R2Z2 object, `{killmail_id, hash, esi, zkb, …}`;
/// - a RedisQ package, `{"package": {killID, killmail?, zkb}}` (`null`: nothing, not an error);
/// - a `killmail.ingest` job, `{killmail_id, hash, killmail?, zkb?, source}`;
/// - zKillboard's API entry, `{killmail_id, zkb}`.
///
/// Those without a body need ESI.
fn decode_record(value: Value) -> Result<Option<Record>, String> {
    let Value::Object(mut map) = value else {
        return Err(format!("not a killmail: a JSON {}", kind(&value)));
    };
    if let Some(package) = map.remove("package") {
        return decode_redisq(package);
    }
    if let Some(esi) = map.remove("esi") {
        let hash = take_hash(&mut map, "hash")?;
        let zkb = take_zkb(&mut map)?;
        let id = take_id(&map, "killmail_id")?;
        let killmail = parse_killmail(esi, "esi")?;
        check_id(id, &killmail)?;
        return received(killmail, hash, zkb).map(Some);
    }
    if let Some(body) = map.remove("killmail") {
        let hash = take_hash(&mut map, "hash")?;
        let zkb = take_zkb(&mut map)?;
        let id = take_id(&map, "killmail_id")?;
        if body.is_null() {
            return needs_esi(id, hash, zkb).map(Some);
        }
        let killmail = parse_killmail(body, "killmail")?;
        check_id(id, &killmail)?;
        return received(killmail, hash, zkb).map(Some);
    }
    let zkb = take_zkb(&mut map)?;
    let hash = match (map.remove("killmail_hash"), map.remove("hash")) {
        (Some(hash), _) | (None, Some(hash)) => string(hash, "killmail_hash")?,
        (None, None) => match zkb.as_ref().and_then(Zkb::hash) {
            Some(hash) => hash.to_owned(),
            None => return Err("no hash: none of killmail_hash, hash or zkb.hash".into()),
        },
    };
    // zKillboard's API lists killmails as `{killmail_id, zkb}`, leaving the body to ESI.
    if !map.contains_key("victim") && !map.contains_key("killmail_time") {
        let id = take_id(&map, "killmail_id")?;
        return needs_esi(id, hash, zkb).map(Some);
    }
    let killmail = parse_killmail(Value::Object(map), "")?;
    received(killmail, hash, zkb).map(Some)
}

fn decode_redisq(package: Value) -> Result<Option<Record>, String> {
    let mut package = match package {
        Value::Null => return Ok(None),
        Value::Object(package) => package,
        other => return Err(format!("RedisQ package is a JSON {}", kind(&other))),
    };
    let id = take_id(&package, "killID")?;
    let zkb = take_zkb(&mut package)?;
    let Some(hash) = zkb.as_ref().and_then(Zkb::hash).map(str::to_owned) else {
        return Err(format!("RedisQ package for killmail {id} has no zkb.hash"));
    };
    match package.remove("killmail") {
        None | Some(Value::Null) => needs_esi(id, hash, zkb).map(Some),
        Some(body) => {
            let killmail = parse_killmail(body, "killmail")?;
            check_id(id, &killmail)?;
            received(killmail, hash, zkb).map(Some)
        }
    }
}

fn parse_killmail(value: Value, field: &str) -> Result<Killmail, String> {
    Killmail::deserialize(value).map_err(|e| {
        if field.is_empty() {
            format!("not a killmail: {e}")
        } else {
            format!("`{field}` is not a killmail: {e}")
        }
    })
}

fn received(killmail: Killmail, hash: String, zkb: Option<Zkb>) -> Result<Record, String> {
    check_hash(&hash)?;
    killmail.validate()?;
    Ok(Record::Killmail(Received {
        killmail,
        hash,
        zkb,
        source: Source::Import,
    }))
}

fn needs_esi(id: KillmailId, hash: String, zkb: Option<Zkb>) -> Result<Record, String> {
    check_hash(&hash)?;
    if id.0 <= 0 {
        return Err(format!("killmail_id {id} is not positive"));
    }
    Ok(Record::NeedsEsi(IngestJob {
        killmail_id: id,
        hash,
        killmail: None,
        zkb,
        source: Source::Import,
    }))
}

fn check_id(id: KillmailId, killmail: &Killmail) -> Result<(), String> {
    if id == killmail.killmail_id {
        Ok(())
    } else {
        Err(format!(
            "record is for killmail {id} but carries killmail {}",
            killmail.killmail_id
        ))
    }
}

fn take_id(map: &Map<String, Value>, key: &str) -> Result<KillmailId, String> {
    match map.get(key) {
        Some(value) => value
            .as_i64()
            .map(KillmailId)
            .ok_or_else(|| format!("`{key}` is not an integer: {value}")),
        None => Err(format!("no `{key}`")),
    }
}

fn take_hash(map: &mut Map<String, Value>, key: &str) -> Result<String, String> {
    match map.remove(key) {
        Some(value) => string(value, key),
        None => Err(format!("no `{key}`")),
    }
}

fn string(value: Value, key: &str) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!("`{key}` is not a string: {other}")),
    }
}

/// The `zkb` block, if there is one; it must be an object.
fn take_zkb(map: &mut Map<String, Value>) -> Result<Option<Zkb>, String> {
    match map.remove("zkb") {
        None | Some(Value::Null) => Ok(None),
        Some(zkb @ Value::Object(_)) => Ok(Some(Zkb(zkb))),
        Some(other) => Err(format!("`zkb` is a JSON {}, not an object", kind(&other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef01234567";

    fn esi(id: i64) -> Value {
        serde_json::json!({
            "killmail_id": id,
            "killmail_time": "2021-12-03T00:00:03Z",
            "solar_system_id": 30002698,
            "victim": {"damage_taken": 1, "ship_type_id": 670, "items": []},
            "attackers": [{"damage_done": 1, "final_blow": true, "security_status": 0.5}]
        })
    }

    fn killmail(result: Result<Option<Record>, String>) -> Received {
        match result {
            Ok(Some(Record::Killmail(received))) => received,
            Ok(Some(Record::NeedsEsi(job))) => panic!("needs ESI: {job:?}"),
            Ok(None) => panic!("nothing"),
            Err(reason) => panic!("rejected: {reason}"),
        }
    }

    fn rejected(result: Result<Option<Record>, String>) -> String {
        match result {
            Err(reason) => reason,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn an_eve_ref_killmail_takes_its_hash_from_killmail_hash() {
        let mut value = esi(5);
        value["killmail_hash"] = HASH.into();
        value["http_last_modified"] = "2021-12-03T11:37:14Z".into();
        let received = killmail(decode_record(value));
        assert_eq!(received.hash, HASH);
        assert_eq!(received.killmail.killmail_id, KillmailId(5));
        assert_eq!(received.source, Source::Import);
        assert_eq!(received.zkb, None);
    }

    #[test]
    fn an_r2z2_object_and_a_redisq_package_carry_their_zkb() {
        let zkb = serde_json::json!({"hash": HASH, "totalValue": 10.0});
        let r2z2 = serde_json::json!({
            "killmail_id": 5, "hash": HASH, "esi": esi(5), "zkb": zkb, "sequence_id": 1
        });
        assert_eq!(killmail(decode_record(r2z2)).zkb, Some(Zkb(zkb.clone())));
        let redisq = serde_json::json!({"package": {"killID": 5, "killmail": esi(5), "zkb": zkb}});
        assert_eq!(killmail(decode_record(redisq)).hash, HASH);
    }

    #[test]
    fn a_redisq_package_without_a_body_needs_esi_and_a_null_package_is_nothing() {
        let zkb = serde_json::json!({"hash": HASH});
        let package = serde_json::json!({"package": {"killID": 5, "zkb": zkb}});
        match decode_record(package) {
            Ok(Some(Record::NeedsEsi(job))) => {
                assert_eq!((job.killmail_id, job.hash.as_str()), (KillmailId(5), HASH));
                assert_eq!(job.source, Source::Import);
            }
            _ => panic!("expected a job for ESI"),
        }
        assert!(matches!(
            decode_record(serde_json::json!({"package": null})),
            Ok(None)
        ));
    }

    #[test]
    fn bad_records_are_rejected_with_their_reason() {
        let mut short_hash = esi(5);
        short_hash["killmail_hash"] = "abc".into();
        assert!(rejected(decode_record(short_hash)).contains("40-character"));
        assert!(rejected(decode_record(esi(5))).contains("no hash"));
        let mut no_attackers = esi(5);
        no_attackers["killmail_hash"] = HASH.into();
        no_attackers["attackers"] = serde_json::json!([]);
        assert!(rejected(decode_record(no_attackers)).contains("no attackers"));
        let mismatch = serde_json::json!({"killmail_id": 6, "hash": HASH, "esi": esi(5)});
        assert!(rejected(decode_record(mismatch)).contains("is for killmail 6"));
        let mut missing = esi(5);
        missing["killmail_hash"] = HASH.into();
        missing
            .as_object_mut()
            .expect("object")
            .remove("killmail_time");
        assert!(rejected(decode_record(missing)).contains("killmail_time"));
        assert!(rejected(decode_record(serde_json::json!(5))).contains("a JSON number"));
    }

    #[test]
    fn files_are_recognised_by_name() {
        let cases = [
            ("killmails-2021-12-03.tar.bz2", Some((Format::Tar, true))),
            ("day.TAR", Some((Format::Tar, false))),
            ("day.tbz2", Some((Format::Tar, true))),
            ("97089202.json", Some((Format::Json, false))),
            ("feed.jsonl", Some((Format::JsonLines, false))),
            ("feed.ndjson.bz2", Some((Format::JsonLines, true))),
            ("README.md", None),
            ("archive.bz2", None),
        ];
        for (name, expected) in cases {
            assert_eq!(InputFile::recognise(Path::new(name)), expected, "{name}");
        }
    }

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
