//! `queue backfill` against a fake EVE Ref serving the real fixture archives: a range of days
//! imported whole and skipped the next time, a missing day and a file that is not an archive
//! reported while the others go on, a download cut off and resumed, and history stored
//! without being announced unless asked.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::import::stored_ids;
use crate::support::fakes::Served;
use crate::support::fakes::everef::FakeEveref;
use crate::support::fakes::sso::{FakeSso, Pilot};
use crate::support::fixtures::archive_values;
use crate::support::{TestEnv, assert_no_more_events, fixtures, receive_events};

/// A download directory for one test, removed when dropped.
struct Downloads(PathBuf);

impl Downloads {
    fn new(env: &TestEnv) -> Self {
        Self(std::env::temp_dir().join(format!("killreport-backfill-{}", env.id)))
    }

    fn file(&self, day: &str) -> PathBuf {
        self.0.join(format!("killmails-{day}.tar.bz2"))
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test environment whose `queue` fetches from a fake EVE Ref into its own directory.
async fn setup() -> (TestEnv, FakeEveref, Served, Downloads) {
    let mut env = TestEnv::new().await;
    let fake = FakeEveref::default();
    let served = fake.serve().await;
    let downloads = Downloads::new(&env);
    env.vars.insert("EVEREF_BASE_URL".into(), served.url());
    env.vars
        .insert("BACKFILL_DIR".into(), downloads.0.display().to_string());
    (env, fake, served, downloads)
}

fn archive_bytes(day: &str) -> Vec<u8> {
    std::fs::read(fixtures::archive(day)).expect("a fixture archive")
}

fn archive_ids(day: &str) -> BTreeSet<i64> {
    archive_values(&fixtures::archive(day))
        .iter()
        .map(|(_, v)| v["killmail_id"].as_i64().expect("killmail_id"))
        .collect()
}

/// An archive in EVE Ref's shape holding the first `n` killmails of `day`'s real one (so that
/// tests are quick), and their ids.
fn small_archive(day: &str, n: usize) -> (Vec<u8>, BTreeSet<i64>) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut ids = BTreeSet::new();
    for (name, value) in archive_values(&fixtures::archive(day)).into_iter().take(n) {
        ids.insert(value["killmail_id"].as_i64().expect("killmail_id"));
        let body = serde_json::to_vec(&value).expect("JSON");
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, body.as_slice())
            .expect("a member");
    }
    let tar = tar.into_inner().expect("a tar archive");
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    bz.write_all(&tar).expect("compressing");
    (bz.finish().expect("compressed"), ids)
}

/// Runs `queue backfill` and returns whether it succeeded and what it printed.
async fn backfill(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let mut all = vec!["backfill"];
    all.extend(args);
    let output = env.run("queue", &all).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.success(), format!("{stdout}\n{stderr}"))
}

/// The number after `label:` on a line of the summary.
fn count(output: &str, label: &str) -> usize {
    output
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label:?} in\n{output}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{label:?} in\n{output}: {e}"))
}

/// The line printed for `day`, as the run went.
fn day_line<'a>(output: &'a str, day: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.starts_with(day))
        .unwrap_or_else(|| panic!("no line for {day} in\n{output}"))
}

#[tokio::test]
async fn a_range_of_days_is_imported_whole_and_skipped_the_next_time_a_missing_day_reported() {
    let (env, fake, _served, downloads) = setup().await;
    // Two small days and a real one, whole.
    let days = ["2021-12-01", "2021-12-02", "2021-12-03"];
    let mut held = Vec::new();
    let mut expected = BTreeSet::new();
    for day in days {
        let (bytes, ids) = if day == "2021-12-03" {
            (archive_bytes(day), archive_ids(day))
        } else {
            small_archive(day, 150)
        };
        fake.add_day(day, bytes);
        held.push(ids.len());
        expected.extend(ids);
    }
    // 2021-11-30 is not on EVE Ref.

    let (ok, output) = backfill(&env, &["--from", "2021-11-30", "--to", "2021-12-03"]).await;
    assert!(!ok, "a missing day makes the run fail:\n{output}");
    let missing = day_line(&output, "2021-11-30");
    assert!(
        missing.contains("missing upstream")
            && missing.contains("/killmails/2021/killmails-2021-11-30.tar.bz2 answered 404"),
        "{output}"
    );
    for (day, held) in days.into_iter().zip(held) {
        let line = day_line(&output, day);
        assert!(
            line.contains(&format!("imported: {held} killmails, {held} stored")),
            "{line}"
        );
        assert!(downloads.file(day).exists(), "{day} is kept on disk");
    }
    assert_eq!(count(&output, "days imported"), 3);
    assert_eq!(count(&output, "days missing"), 1);
    assert_eq!(count(&output, "stored"), expected.len());
    assert_eq!(count(&output, "rejected"), 0);
    assert!(output.contains("1 of 4 days were not imported"), "{output}");
    assert_eq!(stored_ids(&env).await, expected);

    let (_, again) = backfill(&env, &["--from", "2021-11-30", "--to", "2021-12-03"]).await;
    for day in days {
        assert!(
            day_line(&again, day).contains("skipped: imported whole before"),
            "{again}"
        );
        assert_eq!(fake.requests_for(day).len(), 1, "{day} fetched once");
    }
    assert_eq!(count(&again, "days skipped"), 3);
    assert_eq!(count(&again, "stored"), 0);
    let asked = fake.requests_for("2021-11-30").len();
    assert_eq!(asked, 2, "a missing day is asked again");

    // A day on its own, already stored by the range: both bounds are included.
    let (ok, alone) = backfill(&env, &["--from", "2021-12-02", "--to", "2021-12-02"]).await;
    assert!(ok, "{alone}");
    assert_eq!(count(&alone, "days skipped"), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_file_that_is_not_an_archive_is_refused_with_its_reason_and_the_others_go_on() {
    let (env, fake, _served, downloads) = setup().await;
    let page = b"<html><body>Service temporarily unavailable</body></html>";
    fake.add_day("2021-12-01", page.to_vec());
    // bzip2, but broken off half-way.
    let (mut truncated, _) = small_archive("2021-12-02", 100);
    truncated.truncate(truncated.len() / 2);
    fake.add_day("2021-12-02", truncated);
    let (whole, third) = small_archive("2021-12-03", 100);
    fake.add_day("2021-12-03", whole);

    let (ok, output) = backfill(&env, &["--from", "2021-12-01", "--to", "2021-12-03"]).await;
    assert!(!ok, "{output}");
    let html = day_line(&output, "2021-12-01");
    assert!(
        html.contains("failed: not a bzip2 archive") && html.contains("<html>"),
        "{html}"
    );
    let broken = day_line(&output, "2021-12-02");
    assert!(
        broken.contains("failed: not a whole archive") && broken.contains("unreadable"),
        "{broken}"
    );
    let imported = day_line(&output, "2021-12-03");
    assert!(imported.contains("imported: 100 killmails"), "{output}");
    assert_eq!(count(&output, "days imported"), 1);
    assert_eq!(count(&output, "days failed"), 2);
    // Neither bad file is kept: the next run fetches them again.
    assert!(!downloads.file("2021-12-01").exists());
    assert!(!downloads.file("2021-12-02").exists());

    // Once EVE Ref serves real archives, the failed days are imported and the whole one
    // skipped.
    let (first, mut expected) = small_archive("2021-12-01", 100);
    let (second, ids) = small_archive("2021-12-02", 100);
    fake.add_day("2021-12-01", first);
    fake.add_day("2021-12-02", second);
    expected.extend(ids);
    expected.extend(third);
    let (ok, output) = backfill(&env, &["--from", "2021-12-01", "--to", "2021-12-03"]).await;
    assert!(ok, "{output}");
    assert_eq!(count(&output, "days imported"), 2);
    assert_eq!(count(&output, "days skipped"), 1);
    assert_eq!(stored_ids(&env).await, expected);
    env.cleanup().await;
}

/// The size of the partial download of `day`.
fn part_size(downloads: &Downloads, day: &str) -> u64 {
    let mut part = downloads.file(day).into_os_string();
    part.push(".part");
    std::fs::metadata(Path::new(&part))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_download_cut_off_is_resumed_from_where_it_stopped() {
    let (mut env, fake, _served, downloads) = setup().await;
    let day = "2021-12-03";
    let (bytes, mut expected) = small_archive(day, 300);
    fake.add_day(day, bytes.clone());
    fake.cut_off_once(day);
    env.vars
        .insert("BACKFILL_DOWNLOAD_ATTEMPTS".into(), "1".into());

    // One attempt only: the day fails, and what arrived stays on disk.
    let (ok, output) = backfill(&env, &["--from", day, "--to", day]).await;
    assert!(!ok, "{output}");
    assert!(day_line(&output, day).contains("cut off after"), "{output}");
    let had = part_size(&downloads, day);
    assert!(had > 0 && had < bytes.len() as u64, "kept {had} bytes");
    assert_eq!(env.killmail_count().await, 0);

    // The next run asks only for the rest.
    let (ok, output) = backfill(&env, &["--from", day, "--to", day]).await;
    assert!(ok, "{output}");
    let requests = fake.requests_for(day);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    assert_eq!(requests[1].range, Some(format!("bytes={had}-")));
    assert_eq!(
        std::fs::read(downloads.file(day)).expect("the archive"),
        bytes
    );
    let line = day_line(&output, day);
    assert!(
        line.contains("imported: 300 killmails, 300 stored"),
        "{line}"
    );

    // Within one run, a cut-off download is tried again at once, resuming.
    let other = "2021-12-01";
    let (other_bytes, other_ids) = small_archive(other, 300);
    fake.add_day(other, other_bytes);
    fake.cut_off_once(other);
    env.vars
        .insert("BACKFILL_DOWNLOAD_ATTEMPTS".into(), "3".into());
    let (ok, output) = backfill(&env, &["--from", other, "--to", other]).await;
    assert!(ok, "{output}");
    let requests = fake.requests_for(other);
    assert_eq!(requests.len(), 2, "{requests:?}");
    let resumed = requests[1].range.as_deref();
    assert!(
        resumed.is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "{requests:?}"
    );
    expected.extend(other_ids);
    assert_eq!(stored_ids(&env).await, expected);
    env.cleanup().await;
}

async fn pending_announcements(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pending_announcements")
        .fetch_one(&env.pool)
        .await
        .expect("counting pending announcements")
}

#[tokio::test]
async fn backfilled_history_is_stored_but_announced_only_when_asked() {
    let (env, fake, _served, _downloads) = setup().await;
    let (history, _) = small_archive("2021-12-03", 200);
    let (news, day) = small_archive("2021-12-01", 200);
    fake.add_day("2021-12-03", history);
    fake.add_day("2021-12-01", news);
    let mut events = env.subscribe().await;

    let (ok, output) = backfill(&env, &["--from", "2021-12-03", "--to", "2021-12-03"]).await;
    assert!(ok, "{output}");
    assert_eq!(env.killmail_count().await, 200);
    // Nothing announced, and nothing left for worker-killmails' sweep to announce later.
    assert_eq!(pending_announcements(&env).await, 0);
    assert_no_more_events(&mut events, Duration::from_secs(2)).await;
    // Queryable like any other killmail.
    let mut db = env.pool.acquire().await.expect("a connection");
    let (page, more) =
        killreport::db::killmails::page(&mut db, |_| {}, Default::default(), None, 5)
            .await
            .expect("a page");
    assert_eq!(page.len(), 5);
    assert!(more);

    let args = ["--from", "2021-12-01", "--to", "2021-12-01", "--announce"];
    let (ok, output) = backfill(&env, &args).await;
    assert!(ok, "{output}");
    let announced = receive_events(&mut events, day.len()).await;
    let ids: BTreeSet<i64> = announced.iter().map(|e| e.killmail.killmail_id.0).collect();
    assert_eq!(ids, day);
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    assert_eq!(pending_announcements(&env).await, 0);
    env.cleanup().await;
}

/// An admin starts a backfill over GraphQL: the server imports the day in its background,
/// as `queue backfill` would; a range that runs backwards is refused with its reason.
#[tokio::test]
async fn an_admin_starts_a_backfill_over_graphql() {
    let (mut env, fake, _served, _downloads) = setup().await;
    let (bytes, ids) = small_archive("2021-12-02", 30);
    fake.add_day("2021-12-02", bytes);
    let sso = FakeSso::default();
    let admin = Pilot::new(90000040, "Admin Pilot");
    let (_sso, _server, url) =
        crate::auth::server_with_sso(&mut env, &sso, &[("ADMIN_CHARACTER_IDS", "90000040")]).await;
    let token = crate::auth::log_in_through(&url, &sso, &admin).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let backwards = r#"mutation { startBackfill(from: "2021-12-03", to: "2021-12-02") }"#;
    let refused = crate::auth::graphql(&url, Some(&token), backwards).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{refused}"
    );
    let start = r#"mutation { startBackfill(from: "2021-12-02", to: "2021-12-02") }"#;
    let started = crate::auth::graphql(&url, Some(&token), start).await;
    assert_eq!(started["data"]["startBackfill"], true, "{started}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while stored_ids(&env).await != ids {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backfill did not store the day's {} killmails",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.cleanup().await;
}
