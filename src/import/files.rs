//! Reading an import's input: finding the files its paths name (directories walked, kinds
//! recognised by name), and reading them on a blocking thread: EVE Ref's daily tar archives,
//! `.json` files (a record or an array of them) and `.jsonl` files (a record per line), any of
//! them also `.bz2`-compressed (decompressed on every core, see `bz2`). Each record is decoded
//! as it is read and collected into chunks of one batch, encoded for the store, and sent to the
//! writer through a bounded channel, so the next batch is decompressed, parsed and encoded while
//! the last one is written; a record that cannot be imported goes along as a rejection with its
//! place: file, archive member, line, array item.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Rejection;
use super::bz2::ParallelBzDecoder;
use super::records::{Record, decode_plain, decode_record};
use crate::db::killmails::Encoded;
use crate::killmail::Received;
use crate::queue::IngestJob;

/// Batches parsed ahead of the writer: enough to keep it busy, little enough to bound memory.
const BATCHES_AHEAD: usize = 4;

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
    let settings = ReadSettings {
        batch_size: 1000,
        queue_missing: false,
        encode: false,
    };
    let (reader, mut chunks) = Reader::spawn(files, settings);
    let mut killmails = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        killmails.extend(chunk.killmails);
    }
    reader.finish().await?;
    Ok(killmails)
}

/// The thread that reads the files.
pub(super) struct Reader {
    thread: JoinHandle<anyhow::Result<()>>,
    /// Becomes true once the thread has read everything (or given up).
    read: watch::Receiver<bool>,
}

/// How the reader reads.
#[derive(Clone, Copy)]
pub(super) struct ReadSettings {
    /// Killmails per chunk.
    pub(super) batch_size: usize,
    /// Whether records without a body are passed on as jobs, or rejected.
    pub(super) queue_missing: bool,
    /// Whether each chunk's killmails are encoded for the store too.
    pub(super) encode: bool,
}

impl Reader {
    /// Starts reading `files` on a blocking thread (decompressing on threads of its own),
    /// which sends a chunk through the channel returned for every `batch_size` killmails, and
    /// one with the rest at the end.
    pub(super) fn spawn(
        files: Vec<InputFile>,
        settings: ReadSettings,
    ) -> (Self, mpsc::Receiver<Chunk>) {
        let (tx, rx) = mpsc::channel(BATCHES_AHEAD);
        let (done, read) = watch::channel(false);
        let thread = tokio::task::spawn_blocking(move || {
            let outcome = read_files(&files, settings, &tx);
            done.send_replace(true);
            outcome
        });
        (Self { thread, read }, rx)
    }

    /// Resolves once the thread has read everything: its last chunks may still be waiting in
    /// the channel.
    pub(super) fn read_out(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut read = self.read.clone();
        async move {
            // An error means the thread is gone, which is as good.
            let _ = read.wait_for(|read| *read).await;
        }
    }

    /// Waits for the reader to end: after its last chunk, or at its next send once the
    /// receiver is dropped. Fails when a file could not be opened, or the thread panicked.
    pub(super) async fn finish(self) -> anyhow::Result<()> {
        self.thread.await.context("the file reader failed")?
    }
}

/// What the reader hands the writer: a batch, and what else it met on the way.
#[derive(Default)]
pub(super) struct Chunk {
    pub(super) killmails: Vec<Received>,
    /// The killmails encoded for the store, when the reader was asked to.
    pub(super) encoded: Option<Encoded>,
    /// Records without a body, to publish (only when there is a publisher).
    pub(super) jobs: Vec<IngestJob>,
    pub(super) rejections: Vec<Rejection>,
    /// Files finished since the last chunk.
    pub(super) files_done: usize,
    /// Of those, files that broke off before their end (truncated or corrupt).
    pub(super) files_broken: usize,
    /// Bytes of input read up to the end of this chunk, over all files: the progress made
    /// once it is written.
    pub(super) position: u64,
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
    settings: ReadSettings,
    tx: &'a mpsc::Sender<Chunk>,
}

/// The writer has stopped (failed or interrupted): reading on is pointless.
struct WriterGone;

impl Collector<'_> {
    fn record(&mut self, place: Place<'_>, result: Result<Option<Record>, String>) {
        match result {
            Ok(None) => {}
            Ok(Some(Record::Killmail(received))) => self.chunk.killmails.push(received),
            Ok(Some(Record::NeedsEsi(job))) if self.settings.queue_missing => {
                self.chunk.jobs.push(job)
            }
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
        if self.chunk.killmails.len() >= self.settings.batch_size {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), WriterGone> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.position = self.position.load(Ordering::Relaxed);
        if self.settings.encode {
            chunk.encoded = Some(Encoded::new(&chunk.killmails));
        }
        self.chunk.killmails.reserve(self.settings.batch_size);
        self.tx.blocking_send(chunk).map_err(|_| WriterGone)
    }
}

/// The reader's side, on a blocking thread.
fn read_files(
    files: &[InputFile],
    settings: ReadSettings,
    tx: &mpsc::Sender<Chunk>,
) -> anyhow::Result<()> {
    let mut collector = Collector {
        chunk: Chunk::default(),
        position: Arc::default(),
        settings,
        tx,
    };
    collector.chunk.killmails.reserve(settings.batch_size);
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
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        Box::new(ParallelBzDecoder::new(raw, threads))
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
        collector.chunk.files_broken += 1;
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

/// Reads a `.json` file: an array is decoded as it is read, its items passed on one at a time
/// and each chunk sent as it fills, so that an array of any size takes bounded memory and is
/// written in batches; any other value is read whole, as one record.
fn read_json(
    reader: &mut impl BufRead,
    place: Place<'_>,
    collector: &mut Collector<'_>,
) -> Result<Option<std::io::Error>, WriterGone> {
    match starts_with_bracket(reader) {
        Ok(true) => return stream_array(reader, place, collector),
        Ok(false) => {}
        Err(error) => return Ok(Some(error)),
    }
    let mut buffer = Vec::new();
    if let Err(error) = reader.read_to_end(&mut buffer) {
        return Ok(Some(error));
    }
    decode_bytes(&buffer, place, collector);
    collector.send_if_full()?;
    Ok(None)
}

/// Whether the JSON text ahead starts with `[`, leading white space consumed.
fn starts_with_bracket(reader: &mut impl BufRead) -> std::io::Result<bool> {
    loop {
        let buffer = reader.fill_buf()?;
        let Some(&first) = buffer.first() else {
            return Ok(false);
        };
        if !first.is_ascii_whitespace() {
            return Ok(first == b'[');
        }
        let blank = buffer
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        reader.consume(blank);
    }
}

/// Decodes a JSON array from `reader` item by item (see [`read_json`]). What comes after a
/// syntax error is lost, which the rejection says, with the item where it broke off.
fn stream_array(
    reader: &mut impl Read,
    place: Place<'_>,
    collector: &mut Collector<'_>,
) -> Result<Option<std::io::Error>, WriterGone> {
    let mut items = Items {
        place,
        collector,
        count: 0,
        gone: false,
    };
    let mut json = serde_json::Deserializer::from_reader(reader);
    let read =
        serde::de::Deserializer::deserialize_seq(&mut json, &mut items).and_then(|()| json.end());
    if items.gone {
        return Err(WriterGone);
    }
    match read {
        Ok(()) => Ok(None),
        Err(error) if error.is_io() => Ok(Some(error.into())),
        Err(error) => {
            let at = Place {
                item: Some(items.count),
                ..place
            };
            items
                .collector
                .reject(at, format!("not JSON from here on: {error}"));
            Ok(None)
        }
    }
}

/// Passes an array's items to the collector as they are decoded.
struct Items<'p, 'c, 'a> {
    place: Place<'p>,
    collector: &'c mut Collector<'a>,
    /// Items decoded so far.
    count: usize,
    /// The writer stopped: reading was broken off.
    gone: bool,
}

impl<'de> serde::de::Visitor<'de> for &mut Items<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(value) = seq.next_element::<Value>()? {
            let at = Place {
                item: Some(self.count),
                ..self.place
            };
            self.count += 1;
            self.collector.record(at, decode_record(value));
            if self.collector.send_if_full().is_err() {
                self.gone = true;
                return Err(serde::de::Error::custom("the writer stopped"));
            }
        }
        Ok(())
    }
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
    if let Some(record) = decode_plain(bytes) {
        return collector.record(place, record);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const R2Z2_OBJECT: &str = include_str!(
        "../../tests/it/fixtures/upstream/r2z2/r2z2-ephemeral-96599404-killmail-134265477.aa-killtracker.json"
    );

    #[tokio::test]
    async fn a_json_array_is_read_as_it_goes_in_batches_and_a_break_is_placed() {
        let object: Value = serde_json::from_str(R2Z2_OBJECT).expect("JSON");
        let items = vec![object; 2_000];
        let mut text = serde_json::to_string_pretty(&items).expect("JSON");
        // Broken off after the first 1,500 items.
        let cut = text.match_indices("\n  {").nth(1_500).expect("items").0;
        text.truncate(cut);
        text.push_str("\n  {\"killmail_id\": ,");
        let path =
            std::env::temp_dir().join(format!("killreport-array-{}.json", std::process::id()));
        std::fs::write(&path, &text).expect("write");
        let size = text.len() as u64;
        let files = input_files(std::slice::from_ref(&path)).expect("found");

        let settings = ReadSettings {
            batch_size: 100,
            queue_missing: false,
            encode: false,
        };
        let (reader, mut chunks) = Reader::spawn(files, settings);
        let first = chunks.recv().await.expect("a chunk");
        assert_eq!(first.killmails.len(), 100, "a batch");
        assert!(
            first.position < size / 4,
            "sent after reading {} of {size} bytes: not read whole first",
            first.position
        );
        let (mut killmails, mut rejections) = (first.killmails.len(), first.rejections);
        while let Some(chunk) = chunks.recv().await {
            assert!(chunk.killmails.len() <= 100);
            killmails += chunk.killmails.len();
            rejections.extend(chunk.rejections);
        }
        reader.finish().await.expect("read");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(killmails, 1_500);
        assert_eq!(
            rejections.len(),
            1,
            "{:?}",
            rejections.iter().map(|r| &r.reason).collect::<Vec<_>>()
        );
        assert!(
            rejections[0].place.ends_with("item 1500"),
            "{}",
            rejections[0].place
        );
        assert!(
            rejections[0].reason.starts_with("not JSON from here on"),
            "{}",
            rejections[0].reason
        );
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
}
