//! What a fan-out run saw on one target, printed as a block of figures, and several targets'
//! figures side by side with the ratios of the first over each other one.

use std::fmt;
use std::time::Duration;

use crate::latency::Percentiles;
use crate::target::Target;

/// What the server processes of a target spent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerCost {
    /// CPU seconds over the injection phase (from the first injection until everything
    /// arrived or patience ran out).
    pub cpu_seconds: f64,
    /// Resident memory added per subscriber, idle, before any event.
    pub idle_kib_per_subscriber: f64,
    /// The highest resident memory sampled over the run (every 100 ms, summed over pids).
    pub peak_rss_kib: u64,
    /// VmHWM at the end: the peak over each process's whole life, summed.
    pub hwm_kib: u64,
}

/// The clients of one server of a target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlTally {
    pub url: String,
    pub held: usize,
    pub expected: usize,
    pub delivered: usize,
    /// Clients that got everything they should have, once, and nothing else.
    pub complete: usize,
}

/// What a fan-out run saw on one target.
#[derive(Debug, Clone)]
pub struct FanoutReport {
    pub target: Target,
    pub injected_as: &'static str,
    pub asked: usize,
    pub held: usize,
    pub connect_time: Duration,
    /// Why connections failed, with how many failed so.
    pub connect_failures: Vec<(String, usize)>,
    pub documents: usize,
    pub events: usize,
    /// Deliveries the connected clients should get, by killreport's filter semantics.
    pub expected: usize,
    /// Expected deliveries that arrived (first receipts).
    pub delivered: usize,
    pub duplicated: usize,
    /// Injected killmails delivered to a client whose filter excludes them: a failure.
    pub unexpected: usize,
    /// Killmails not injected by this run.
    pub foreign: usize,
    /// `next` payloads that carried GraphQL errors.
    pub errors: usize,
    /// How clients that stopped early stopped, with how many did so.
    pub endings: Vec<(String, usize)>,
    /// Per server of the target, in the order of its URLs.
    pub per_url: Vec<UrlTally>,
    /// From the first injection to the last receipt.
    pub elapsed: Duration,
    pub latency: Percentiles,
    pub server: Option<ServerCost>,
    /// The load generator's own CPU over the injection phase, to see whether it kept up.
    pub loadgen_cpu_seconds: f64,
}

impl FanoutReport {
    /// Clients that got everything they should have, once, and nothing else.
    pub fn complete_clients(&self) -> usize {
        self.per_url.iter().map(|u| u.complete).sum()
    }

    pub fn lost(&self) -> usize {
        self.expected - self.delivered
    }

    pub fn messages_per_second(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// `None` without a pid, or when the server used no measurable CPU (a wrong pid).
    pub fn messages_per_cpu_second(&self) -> Option<f64> {
        self.server
            .filter(|s| s.cpu_seconds > 0.0)
            .map(|s| self.delivered as f64 / s.cpu_seconds)
    }

    pub fn cpu_ms_per_event(&self) -> Option<f64> {
        self.server
            .map(|s| s.cpu_seconds * 1000.0 / self.events.max(1) as f64)
    }

    /// Whether every connection held and every expected delivery came, once, and nothing else.
    pub fn complete(&self) -> bool {
        self.held == self.asked
            && self.lost() == 0
            && self.duplicated == 0
            && self.unexpected == 0
            && self.errors == 0
            && self.endings.is_empty()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `12345678` as `12,345,678`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.target;
        let pids = match target.pids.as_slice() {
            [] => "no pid: server cost not measured".to_owned(),
            pids => format!(
                "pid {}",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("+")
            ),
        };
        writeln!(
            f,
            "== {} ({}; {pids}){}",
            target.name,
            target.urls.join(" + "),
            if self.complete() { "" } else { "  INCOMPLETE" }
        )?;
        writeln!(
            f,
            "connections  {} held of {} asked, opened in {:.1} s",
            thousands(self.held),
            thousands(self.asked),
            self.connect_time.as_secs_f64()
        )?;
        for (reason, count) in self.connect_failures.iter().take(5) {
            writeln!(f, "  {} failed to connect: {reason}", thousands(*count))?;
        }
        writeln!(
            f,
            "documents    {} (client i subscribes with document i mod {})",
            self.documents, self.documents
        )?;
        writeln!(f, "events       {} as {}", self.events, self.injected_as)?;
        writeln!(
            f,
            "deliveries   expected {}, delivered {}, lost {}, duplicated {}, unexpected {}",
            thousands(self.expected),
            thousands(self.delivered),
            thousands(self.lost()),
            thousands(self.duplicated),
            thousands(self.unexpected)
        )?;
        if self.foreign > 0 || self.errors > 0 {
            writeln!(
                f,
                "  also {} killmails not injected by this run, {} payloads with GraphQL errors",
                thousands(self.foreign),
                thousands(self.errors)
            )?;
        }
        writeln!(
            f,
            "subscribers  {} of {} held got all they should, once, and nothing else",
            thousands(self.complete_clients()),
            thousands(self.held)
        )?;
        if self.per_url.len() > 1 {
            for url in &self.per_url {
                writeln!(
                    f,
                    "  {}: {} held, {} complete, delivered {} of {}",
                    url.url,
                    thousands(url.held),
                    thousands(url.complete),
                    thousands(url.delivered),
                    thousands(url.expected)
                )?;
            }
        }
        for (ending, count) in self.endings.iter().take(5) {
            writeln!(f, "  {} clients: {ending}", thousands(*count))?;
        }
        writeln!(
            f,
            "throughput   {:.0} delivered msgs/s over {:.1} s",
            self.messages_per_second(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "latency      {}", self.latency)?;
        if let Some(server) = self.server {
            writeln!(
                f,
                "server       {:.2} CPU-s while injecting, {:.0} delivered msgs per CPU-s, {:.1} CPU-ms per event",
                server.cpu_seconds,
                self.messages_per_cpu_second().unwrap_or(0.0),
                self.cpu_ms_per_event().unwrap_or(0.0)
            )?;
            writeln!(
                f,
                "memory       idle {:.1} KiB per subscriber, peak RSS {:.0} MiB over the run (VmHWM {:.0} MiB)",
                server.idle_kib_per_subscriber,
                server.peak_rss_kib as f64 / 1024.0,
                server.hwm_kib as f64 / 1024.0
            )?;
        }
        write!(
            f,
            "loadgen      {:.2} CPU-s while injecting",
            self.loadgen_cpu_seconds
        )
    }
}

/// The targets side by side (a Markdown table), with the first over each other one.
pub fn comparison(reports: &[FanoutReport]) -> String {
    type Figure = fn(&FanoutReport) -> Option<f64>;
    /// (label, figure, how it is shown, whether a ratio means something)
    type Row = (&'static str, Figure, fn(f64) -> String, bool);
    let decimal = |v: f64| format!("{v:.1}");
    let rows: [Row; 13] = [
        ("connections held", |r| Some(r.held as f64), count, false),
        ("expected", |r| Some(r.expected as f64), count, false),
        ("delivered", |r| Some(r.delivered as f64), count, false),
        ("lost", |r| Some(r.lost() as f64), count, false),
        (
            "complete subscribers",
            |r| Some(r.complete_clients() as f64),
            count,
            false,
        ),
        (
            "duplicated + unexpected",
            |r| Some((r.duplicated + r.unexpected) as f64),
            count,
            false,
        ),
        (
            "delivered msgs/s",
            |r| Some(r.messages_per_second()),
            count,
            true,
        ),
        (
            "delivered msgs per CPU-s",
            FanoutReport::messages_per_cpu_second,
            count,
            true,
        ),
        (
            "CPU-ms per event",
            FanoutReport::cpu_ms_per_event,
            decimal,
            true,
        ),
        (
            "p50 latency (ms)",
            |r| Some(ms(r.latency.p50)),
            decimal,
            true,
        ),
        (
            "p99 latency (ms)",
            |r| Some(ms(r.latency.p99)),
            decimal,
            true,
        ),
        (
            "peak RSS (MiB)",
            |r| r.server.map(|s| s.peak_rss_kib as f64 / 1024.0),
            |v| format!("{v:.0}"),
            true,
        ),
        (
            "idle KiB per subscriber",
            |r| r.server.map(|s| s.idle_kib_per_subscriber),
            decimal,
            true,
        ),
    ];
    let Some((first, others)) = reports.split_first() else {
        return String::new();
    };
    let mut header = vec!["".to_owned()];
    header.extend(reports.iter().map(|r| r.target.name.clone()));
    header.extend(
        others
            .iter()
            .map(|o| format!("{} / {}", first.target.name, o.target.name)),
    );
    let mut lines = vec![
        format!("| {} |", header.join(" | ")),
        format!("|{}", " --- |".repeat(header.len())),
    ];
    for (label, figure, shown, ratio) in rows {
        let mut cells = vec![label.to_owned()];
        cells.extend(
            reports
                .iter()
                .map(|r| figure(r).map_or_else(|| "–".to_owned(), shown)),
        );
        cells.extend(others.iter().map(|o| match (figure(first), figure(o)) {
            _ if !ratio => String::new(),
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
            _ => "–".to_owned(),
        }));
        lines.push(format!("| {} |", cells.join(" | ")));
    }
    lines.join("\n")
}

fn count(v: f64) -> String {
    thousands(v.round().max(0.0) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, delivered: usize, cpu_seconds: f64) -> FanoutReport {
        FanoutReport {
            target: Target {
                name: name.into(),
                urls: vec!["ws://127.0.0.1:1/graphql".into()],
                pids: vec![1],
            },
            injected_as: "events on Redis",
            asked: 10,
            held: 10,
            connect_time: Duration::from_millis(100),
            connect_failures: Vec::new(),
            documents: 1,
            events: 10,
            expected: 100,
            delivered,
            duplicated: 0,
            unexpected: 0,
            foreign: 0,
            errors: 0,
            endings: Vec::new(),
            per_url: vec![UrlTally {
                url: "ws://127.0.0.1:1/graphql".into(),
                held: 10,
                expected: 100,
                delivered,
                complete: if delivered == 100 { 10 } else { 0 },
            }],
            elapsed: Duration::from_secs(1),
            latency: Percentiles::default(),
            server: Some(ServerCost {
                cpu_seconds,
                idle_kib_per_subscriber: 8.0,
                peak_rss_kib: 20 * 1024,
                hwm_kib: 30 * 1024,
            }),
            loadgen_cpu_seconds: 0.5,
        }
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(15_000_000), "15,000,000");
    }

    #[test]
    fn the_comparison_divides_the_first_by_each_other() {
        let table = comparison(&[report("kr", 100, 0.5), report("peer", 50, 2.0)]);
        assert!(table.starts_with("|  | kr | peer | kr / peer |"), "{table}");
        assert!(
            table.contains("| delivered msgs per CPU-s | 200 | 25 | 8.00× |"),
            "{table}"
        );
        assert!(table.contains("| lost | 0 | 50 |  |"), "{table}");
        assert!(
            table.contains("| CPU-ms per event | 50.0 | 200.0 | 0.25× |"),
            "{table}"
        );
    }

    #[test]
    fn a_report_with_losses_is_marked() {
        let lossy = report("kr", 90, 1.0);
        assert!(!lossy.complete());
        assert!(lossy.to_string().contains("INCOMPLETE"));
        assert!(report("kr", 100, 1.0).complete());
    }
}
