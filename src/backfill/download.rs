//! Fetching one EVE Ref daily archive into the download directory: written to `<name>.part`
//! and renamed once whole, so a file without `.part` is always complete; a partial file left by
//! a cut-off download (in this run or an earlier one) is resumed with an HTTP `Range` request;
//! what arrives is checked to be bzip2 before it is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use tokio::io::AsyncWriteExt;

/// What fetching a day's archive came to.
#[derive(Debug)]
pub(super) enum Fetched {
    /// The archive, whole, on disk.
    File(PathBuf),
    /// EVE Ref has no archive for the day (404).
    Missing,
}

/// How a download failed: the reason to report for the day.
pub(super) type Refusal = String;

/// Fetches `url` into `dest` unless `dest` is already there, resuming a partial file, trying
/// `attempts` times in all (a cut-off download, a 5xx or a failed connection is tried again
/// from where it stopped, after `pause`).
pub(super) async fn fetch(
    http: &reqwest::Client,
    url: &str,
    dest: &Path,
    attempts: u32,
    pause: Duration,
) -> Result<Fetched, Refusal> {
    if !dest.exists() {
        let part = part_path(dest);
        let attempts = attempts.max(1);
        let mut last = None;
        for attempt in 1..=attempts {
            if let Some(reason) = &last {
                tracing::info!(url, attempt, %reason, "downloading again from where it stopped");
                tokio::time::sleep(pause).await;
            }
            match download(http, url, &part).await {
                Ok(Some(())) => {
                    last = None;
                    break;
                }
                Ok(None) => return Ok(Fetched::Missing),
                Err(Attempt::Final(reason)) => return Err(reason),
                Err(Attempt::Again(reason)) => last = Some(reason),
            }
        }
        if let Some(reason) = last {
            return Err(format!(
                "download failed {attempts} times, last: {reason} (what arrived is kept, and \
                 the next run resumes it)"
            ));
        }
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| format!("keeping the download {}: {e}", dest.display()))?;
    }
    check_bzip2(dest).await?;
    Ok(Fetched::File(dest.to_owned()))
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

enum Attempt {
    /// Worth trying again, from where it stopped.
    Again(String),
    /// Trying again cannot help.
    Final(String),
}

/// One request: `Ok(None)` when the day is missing upstream.
async fn download(http: &reqwest::Client, url: &str, part: &Path) -> Result<Option<()>, Attempt> {
    let have = tokio::fs::metadata(part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let mut request = http.get(url);
    if have > 0 {
        request = request.header(RANGE, format!("bytes={have}-"));
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| Attempt::Again(format!("requesting {url}: {e}")))?;
    let status = response.status();
    let append = match status {
        StatusCode::NOT_FOUND => return Ok(None),
        StatusCode::PARTIAL_CONTENT if resumes_at(&response, have) => true,
        // A range past the end: what we hold is not a prefix of this file; start over.
        StatusCode::RANGE_NOT_SATISFIABLE | StatusCode::PARTIAL_CONTENT => {
            let _ = tokio::fs::remove_file(part).await;
            return Err(Attempt::Again(format!(
                "{url} answered {status} to a resumed download; starting over"
            )));
        }
        StatusCode::OK => false,
        status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            return Err(Attempt::Again(format!("{url} answered {status}")));
        }
        status => return Err(Attempt::Final(format!("{url} answered {status}"))),
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await
        .map_err(|e| Attempt::Final(format!("writing {}: {e}", part.display())))?;
    let mut written = if append { have } else { 0 };
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => {
                file.write_all(&bytes)
                    .await
                    .map_err(|e| Attempt::Final(format!("writing {}: {e}", part.display())))?;
                written += bytes.len() as u64;
            }
            Ok(None) => break,
            Err(error) => {
                let _ = file.flush().await;
                return Err(Attempt::Again(format!(
                    "cut off after {written} bytes: {error}"
                )));
            }
        }
    }
    file.flush()
        .await
        .map_err(|e| Attempt::Final(format!("writing {}: {e}", part.display())))?;
    Ok(Some(()))
}

/// Whether a 206 answer continues the file at `have`, as asked.
fn resumes_at(response: &reqwest::Response, have: u64) -> bool {
    response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|start| start.parse::<u64>().ok())
        == Some(have)
}

/// Refuses a file that is not bzip2 (`BZh` and a block size digit), deleting it so the next
/// run fetches it again.
async fn check_bzip2(path: &Path) -> Result<(), Refusal> {
    let head = read_head(path)
        .await
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if matches!(head.as_slice(), [b'B', b'Z', b'h', b'1'..=b'9', ..]) {
        return Ok(());
    }
    let _ = tokio::fs::remove_file(path).await;
    let shown: String = String::from_utf8_lossy(&head)
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    Err(format!(
        "not a bzip2 archive: it begins {shown:?} where bzip2 begins \"BZh\" (deleted; it is \
         fetched again next time)"
    ))
}

async fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(16);
    tokio::fs::File::open(path)
        .await?
        .take(16)
        .read_to_end(&mut head)
        .await?;
    Ok(head)
}
