//! bzip2 decompressed on every core. A bzip2 stream is a header and a series of blocks, each
//! compressed on its own and opened by a 48-bit magic number at any bit offset, then an
//! end-of-stream marker with the CRC of all blocks; concatenated streams (pbzip2) are one file.
//! [`ParallelBzDecoder`] finds the blocks by scanning for the magic, rewraps each as a stream
//! of its own (header, the block's bits, an end marker carrying the block's CRC) and hands it
//! to a worker thread, which decodes it with the `bzip2` crate (libbzip2's code, so its checks
//! of each block apply, the block CRC included); blocks come back in order, and the stream's
//! CRC is checked here against the blocks'. Memory stays bounded: the compressed input is read
//! in pieces, and at most two blocks per worker are in flight.
//!
//! Why not a crate: of those that decompress bzip2 in parallel, `bzip2-rs` has its parallel
//! decoder only on an unreleased branch, and `parallel_bzip2_decoder` 0.2 ends a corrupt or
//! cut-off file as if it were whole (the failing block's error is dropped and reading returns
//! end of file), which would record a broken archive's day as imported.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// The magic number opening each block: the digits of pi.
const BLOCK_MAGIC: u64 = 0x3141_5926_5359;
/// The magic number of the end-of-stream marker: the digits of sqrt(pi).
const END_MAGIC: u64 = 0x1772_4538_5090;
const MAGIC_MASK: u64 = (1 << 48) - 1;
/// Compressed bytes read at a time.
const READ_SIZE: usize = 1 << 20;
const STOPPED: &str = "a bzip2 decompression thread stopped";

/// A reader of bzip2 data (one stream or several, concatenated) that decodes its blocks on
/// `threads` worker threads.
pub struct ParallelBzDecoder<R> {
    scanner: Scanner<R>,
    workers: Vec<Worker>,
    /// What the scanner found, in order, as far as it has been dispatched.
    queued: VecDeque<Pending>,
    /// Blocks dispatched: the next one goes to worker `sent % workers.len()`.
    sent: usize,
    /// Blocks collected, in the same round-robin order.
    collected: usize,
    /// The scanner has found the end or an error.
    scanned: bool,
    /// The stream CRC so far, folded from the block CRCs in order.
    combined: u32,
    out: Vec<u8>,
    out_pos: usize,
}

/// One worker thread: blocks in, decoded blocks out, both in order. The thread ends when
/// either channel is dropped, with the decoder.
struct Worker {
    jobs: SyncSender<Vec<u8>>,
    results: Receiver<Result<Vec<u8>, String>>,
}

/// What the reader is to hand out next, in the input's order.
enum Pending {
    /// The next block of the round robin, with its CRC.
    Block(u32),
    /// The end of a stream, with the CRC it gives for all its blocks.
    StreamEnd(u32),
    Error(String),
}

impl<R: Read> ParallelBzDecoder<R> {
    pub fn new(input: R, threads: usize) -> Self {
        let workers = (0..threads.max(1))
            .map(|_| {
                let (jobs, inbox) = sync_channel::<Vec<u8>>(2);
                let (outbox, results) = sync_channel(2);
                std::thread::spawn(move || {
                    for stream in inbox {
                        if outbox.send(decode_stream(&stream)).is_err() {
                            return;
                        }
                    }
                });
                Worker { jobs, results }
            })
            .collect();
        Self {
            scanner: Scanner::new(input),
            workers,
            queued: VecDeque::new(),
            sent: 0,
            collected: 0,
            scanned: false,
            combined: 0,
            out: Vec::new(),
            out_pos: 0,
        }
    }

    /// Dispatches what the scanner finds until every worker has two blocks in hand or the
    /// input is done.
    fn dispatch(&mut self) {
        let limit = self.workers.len() * 2;
        while !self.scanned && self.sent - self.collected < limit {
            match self.scanner.next() {
                Found::Block { stream, crc } => {
                    let worker = &self.workers[self.sent % self.workers.len()];
                    if worker.jobs.send(stream).is_err() {
                        self.queued.push_back(Pending::Error(STOPPED.into()));
                        self.scanned = true;
                        return;
                    }
                    self.sent += 1;
                    self.queued.push_back(Pending::Block(crc));
                }
                Found::StreamEnd { crc } => self.queued.push_back(Pending::StreamEnd(crc)),
                Found::End => self.scanned = true,
                Found::Error(reason) => {
                    self.scanned = true;
                    self.queued.push_back(Pending::Error(reason));
                }
            }
        }
    }

    /// Fills `out` with the next decoded block; `false` at the end of the input.
    fn refill(&mut self) -> io::Result<bool> {
        loop {
            self.dispatch();
            let Some(found) = self.queued.pop_front() else {
                return Ok(false);
            };
            match found {
                Pending::Block(crc) => {
                    let worker = &self.workers[self.collected % self.workers.len()];
                    self.collected += 1;
                    let decoded = worker
                        .results
                        .recv()
                        .unwrap_or_else(|_| Err(STOPPED.into()))
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.combined = self.combined.rotate_left(1) ^ crc;
                    self.out = decoded;
                    self.out_pos = 0;
                    return Ok(true);
                }
                Pending::StreamEnd(crc) => {
                    let combined = std::mem::take(&mut self.combined);
                    if combined != crc {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "bzip2 stream CRC mismatch: the blocks make {combined:#010x}, \
                                 the stream says {crc:#010x}"
                            ),
                        ));
                    }
                }
                Pending::Error(reason) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
                }
            }
        }
    }
}

impl<R: Read> Read for ParallelBzDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos == self.out.len() {
            if !self.refill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// Decodes one rewrapped block.
fn decode_stream(stream: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(stream.len() * 8);
    bzip2::read::BzDecoder::new(stream)
        .read_to_end(&mut out)
        .map_err(|e| format!("corrupt bzip2 block: {e}"))?;
    Ok(out)
}

/// What the scanner found next in the input.
enum Found {
    /// A block, rewrapped as a stream of its own, and its CRC.
    Block { stream: Vec<u8>, crc: u32 },
    /// The end of a stream, with the CRC it gives for all its blocks.
    StreamEnd { crc: u32 },
    /// The end of the input.
    End,
    /// The input is not (or no longer) bzip2, and why.
    Error(String),
}

/// Where the scanner is in the format.
#[derive(Clone, Copy)]
enum State {
    /// At a byte boundary where a stream header may begin; `first` for the input's start.
    Header {
        first: bool,
    },
    /// Inside a stream of this block size level, at a block or the end marker.
    Blocks {
        level: u8,
    },
    Done,
}

/// Finds blocks in the compressed input, read a piece at a time.
struct Scanner<R> {
    input: R,
    /// Compressed bytes from `offset` in the input.
    buf: Vec<u8>,
    /// The input's byte offset of `buf[0]`, for messages.
    offset: u64,
    /// The bit in `buf` where the next thing begins.
    pos: usize,
    /// Bits of `buf` below this were searched for a magic number already (from `pos + 48`).
    searched: usize,
    eof: bool,
    state: State,
}

impl<R: Read> Scanner<R> {
    fn new(input: R) -> Self {
        Self {
            input,
            buf: Vec::new(),
            offset: 0,
            pos: 0,
            searched: 0,
            eof: false,
            state: State::Header { first: true },
        }
    }

    fn bits(&self) -> usize {
        self.buf.len() * 8
    }

    /// Reads another piece of input, dropping what is behind `pos`; `false` at its end.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let behind = self.pos / 8;
        if behind > 0 {
            self.buf.drain(..behind);
            self.offset += behind as u64;
            self.pos -= behind * 8;
            self.searched = self.searched.saturating_sub(behind * 8);
        }
        let had = self.buf.len();
        self.buf.resize(had + READ_SIZE, 0);
        let read = loop {
            match self.input.read(&mut self.buf[had..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let n = read.inspect_err(|_| self.buf.truncate(had))?;
        self.buf.truncate(had + n);
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// Makes sure `bits` bits from `pos` are in the buffer; `false` if the input ends first.
    fn want(&mut self, bits: usize) -> io::Result<bool> {
        while self.pos + bits > self.bits() {
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn next(&mut self) -> Found {
        match self.step() {
            Ok(found) => found,
            Err(e) => {
                self.state = State::Done;
                Found::Error(format!("reading the bzip2 input: {e}"))
            }
        }
    }

    fn step(&mut self) -> io::Result<Found> {
        loop {
            match self.state {
                State::Done => return Ok(Found::End),
                State::Header { first } => {
                    if !self.want(32)? {
                        // After a stream, what is left is ignored, as bzip2 itself does.
                        self.state = State::Done;
                        return Ok(if first {
                            self.error("not bzip2: the input ends before a header")
                        } else {
                            Found::End
                        });
                    }
                    let at = self.pos / 8;
                    match self.buf[at..at + 4] {
                        [b'B', b'Z', b'h', level @ b'1'..=b'9'] => {
                            self.pos += 32;
                            self.state = State::Blocks {
                                level: level - b'0',
                            };
                        }
                        // What follows the last stream is ignored, as bzip2 itself does.
                        _ if !first => {
                            self.state = State::Done;
                            return Ok(Found::End);
                        }
                        _ => {
                            self.state = State::Done;
                            return Ok(self.error("not bzip2: no \"BZh\" header"));
                        }
                    }
                }
                State::Blocks { level } => return self.block(level),
            }
        }
    }

    fn error(&mut self, reason: &str) -> Found {
        self.state = State::Done;
        Found::Error(format!(
            "{reason} (at byte {})",
            self.offset + (self.pos / 8) as u64
        ))
    }

    /// At a block or an end marker.
    fn block(&mut self, level: u8) -> io::Result<Found> {
        if !self.want(80)? {
            return Ok(self.error("the bzip2 input ends unexpectedly"));
        }
        let magic = read_bits(&self.buf, self.pos, 48);
        let crc = u32::try_from(read_bits(&self.buf, self.pos + 48, 32)).unwrap_or_default();
        if magic == END_MAGIC {
            self.pos = (self.pos + 80).div_ceil(8) * 8;
            self.state = State::Header { first: false };
            return Ok(Found::StreamEnd { crc });
        }
        if magic != BLOCK_MAGIC {
            return Ok(self.error("corrupt bzip2 data: no block where one should begin"));
        }
        // A block holds at most level × 100,000 bytes before compression, which compresses to
        // little more than that; looking further would only fill memory.
        let longest = usize::from(level) * 100_000 * 5 / 4 + 4096;
        self.searched = self.searched.max(self.pos + 48);
        let end = loop {
            if let Some(end) = find_magic(&self.buf, self.searched) {
                break end;
            }
            // Every start up to 64 bits before the end was tried.
            self.searched = self
                .searched
                .max((self.bits().saturating_sub(63)).max(self.pos + 48));
            if (self.bits() - self.pos) / 8 > longest {
                return Ok(self.error("corrupt bzip2 data: a block with no end"));
            }
            if !self.fill()? {
                return Ok(self.error("the bzip2 input ends inside a block (cut off?)"));
            }
        };
        let stream = rewrap(&self.buf, self.pos, end, level, crc);
        self.pos = end;
        self.searched = end + 48;
        Ok(Found::Block { stream, crc })
    }
}

/// `count` (at most 57) bits of `buf` from bit `at`, most significant first; bits past the end
/// read as zero.
fn read_bits(buf: &[u8], at: usize, count: u32) -> u64 {
    let mut word = [0u8; 8];
    let start = at / 8;
    let available = buf.len().saturating_sub(start).min(8);
    word[..available].copy_from_slice(&buf[start..start + available]);
    let word = u64::from_be_bytes(word) << (at % 8);
    word >> (64 - count)
}

/// The first bit at or after `from` where a block magic or the end marker begins, among the
/// starts whose 64-bit window lies wholly in `buf`.
fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    let mut byte = from / 8;
    let first_shift = from % 8;
    while byte + 8 <= buf.len() {
        let word = u64::from_be_bytes(buf[byte..byte + 8].try_into().ok()?);
        let shifts = if byte == from / 8 { first_shift } else { 0 };
        for shift in shifts..8 {
            let candidate = (word >> (16 - shift)) & MAGIC_MASK;
            if candidate == BLOCK_MAGIC || candidate == END_MAGIC {
                return Some(byte * 8 + shift);
            }
        }
        byte += 1;
    }
    None
}

/// A one-block bzip2 stream: the header, the bits `start..end` of `buf` (the block, its magic
/// and CRC included), and an end marker whose stream CRC is the block's own.
fn rewrap(buf: &[u8], start: usize, end: usize, level: u8, crc: u32) -> Vec<u8> {
    let bits = end - start;
    let mut out = Vec::with_capacity(bits / 8 + 16);
    out.extend_from_slice(&[b'B', b'Z', b'h', b'0' + level]);
    let shift = start % 8;
    let first = start / 8;
    let whole = bits / 8;
    if shift == 0 {
        out.extend_from_slice(&buf[first..first + whole]);
    } else {
        out.extend(
            buf[first..=first + whole]
                .windows(2)
                .map(|pair| (pair[0] << shift) | (pair[1] >> (8 - shift))),
        );
    }
    // The block's last bits, then the end marker and CRC, then zeros to a byte boundary.
    let rest = u32::try_from(bits % 8).unwrap_or_default();
    let mut acc = u128::from(read_bits(buf, start + whole * 8, 8) >> (8 - rest));
    acc = (acc << 48) | u128::from(END_MAGIC);
    acc = (acc << 32) | u128::from(crc);
    let mut len = rest + 80;
    let pad = (8 - len % 8) % 8;
    acc <<= pad;
    len += pad;
    out.extend_from_slice(&acc.to_be_bytes()[16 - (len / 8) as usize..]);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn compress(data: &[u8], level: u32) -> Vec<u8> {
        let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(level));
        encoder.write_all(data).expect("compressing");
        encoder.finish().expect("compressed")
    }

    /// Data of many blocks at level 1 that compresses poorly enough to be quick to make.
    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if i % 3 == 0 {
                    b'a' + (state % 7) as u8
                } else {
                    (state >> 24) as u8
                }
            })
            .collect()
    }

    fn decode(bytes: &[u8], threads: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ParallelBzDecoder::new(bytes, threads).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn decodes_many_blocks_and_concatenated_streams_in_order() {
        let data = sample(450_000);
        let one = compress(&data, 1);
        for threads in [1, 2, 3] {
            assert_eq!(decode(&one, threads).expect("decodes"), data);
        }
        let mut two = one.clone();
        two.extend(compress(b"and a second stream", 9));
        let mut expected = data.clone();
        expected.extend(b"and a second stream");
        assert_eq!(decode(&two, 2).expect("decodes"), expected);
        assert_eq!(decode(&compress(b"", 9), 2).expect("decodes"), b"");
    }

    #[test]
    fn a_cut_off_or_corrupt_input_is_an_error_after_the_blocks_before_it() {
        let data = sample(450_000);
        let whole = compress(&data, 1);
        let cut = &whole[..whole.len() / 2];
        let mut out = Vec::new();
        let error = ParallelBzDecoder::new(cut, 2)
            .read_to_end(&mut out)
            .expect_err("cut off");
        assert!(error.to_string().contains("ends inside a block"), "{error}");
        assert!(
            !out.is_empty() && data.starts_with(&out),
            "the blocks before it came out"
        );

        let mut corrupt = whole.clone();
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0x10;
        assert!(decode(&corrupt, 2).is_err());

        let error = decode(b"<html>not found</html>", 2).expect_err("not bzip2");
        assert!(error.to_string().contains("not bzip2"), "{error}");
        assert!(
            decode(b"", 2).is_err(),
            "an empty file is not a bzip2 stream"
        );
    }
}
