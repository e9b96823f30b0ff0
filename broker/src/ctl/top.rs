//! `tetherctl top`: per-container rates (packets, bytes, drops and denials per second)
//! from successive stats calls, busiest first, either refreshed in place on the terminal
//! (crossterm: raw mode and the alternate screen, restored on every way out) or printed
//! once. The rates and the table are pure functions; only `run` does I/O.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute, queue, style::Print};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::ctl::format::{human_bytes, short_id, Table};
use crate::error::CtlError;
use tether_api::client::Client;
use tether_api::types::{ContainerStatsInfo, Counters};

/// One container's counters per second over an interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerSecond {
    pub rx_packets: f64,
    pub rx_bytes: f64,
    pub tx_packets: f64,
    pub tx_bytes: f64,
    pub drops: f64,
    pub denials: f64,
}

impl PerSecond {
    /// The rates between two readings `secs` apart. A counter that went down (it never
    /// does for one cgroup) counts as no traffic.
    pub fn between(before: &Counters, after: &Counters, secs: f64) -> PerSecond {
        let rate = |b: u64, a: u64| a.saturating_sub(b) as f64 / secs;
        PerSecond {
            rx_packets: rate(before.rx_packets, after.rx_packets),
            rx_bytes: rate(before.rx_bytes, after.rx_bytes),
            tx_packets: rate(before.tx_packets, after.tx_packets),
            tx_bytes: rate(before.tx_bytes, after.tx_bytes),
            drops: rate(before.drops, after.drops),
            denials: rate(before.denials, after.denials),
        }
    }

    fn bytes(&self) -> f64 {
        self.rx_bytes + self.tx_bytes
    }

    fn packets(&self) -> f64 {
        self.rx_packets + self.tx_packets
    }
}

/// One row of the view: a live container and its rates (`None` for a container the
/// earlier reading did not have, e.g. one created since).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub id: String,
    pub namespace: String,
    #[serde(flatten)]
    pub rate: Option<PerSecond>,
}

/// The rows for two stats readings `elapsed` apart: live containers only, busiest first
/// (bytes, then packets per second), those without a rate last, then by id. A container
/// matches its earlier reading by id and cgroup (a new cgroup starts new counters).
pub fn rows(
    before: &[ContainerStatsInfo],
    after: &[ContainerStatsInfo],
    elapsed: Duration,
) -> Vec<Row> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let earlier: HashMap<(&str, u64), &Counters> = before
        .iter()
        .filter(|s| !s.deleted)
        .map(|s| ((s.id.as_str(), s.cgroup_id), &s.total))
        .collect();
    let mut rows: Vec<Row> = after
        .iter()
        .filter(|s| !s.deleted)
        .map(|s| Row {
            id: s.id.clone(),
            namespace: s.namespace.clone(),
            rate: earlier
                .get(&(s.id.as_str(), s.cgroup_id))
                .map(|b| PerSecond::between(b, &s.total, secs)),
        })
        .collect();
    let key = |r: &Row| r.rate.as_ref().map(|p| (p.bytes(), p.packets()));
    rows.sort_by(|a, b| {
        match (key(a), key(b)) {
            (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then_with(|| a.id.cmp(&b.id))
    });
    rows
}

/// `0`, `0.5`, `1234`: one decimal below 10.
fn count_rate(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn byte_rate(v: f64) -> String {
    format!("{}/s", human_bytes(v.round() as u64))
}

/// The table of `rows`; `-` where a container has no rate yet.
pub fn table(rows: &[Row]) -> String {
    let mut t = Table::new(&[
        ("CONTAINER", false),
        ("NAMESPACE", false),
        ("RX PKT/s", true),
        ("RX", true),
        ("TX PKT/s", true),
        ("TX", true),
        ("DROPS/s", true),
        ("DENIALS/s", true),
    ]);
    for r in rows {
        let mut cells = vec![short_id(&r.id).to_string(), r.namespace.clone()];
        match &r.rate {
            Some(p) => cells.extend([
                count_rate(p.rx_packets),
                byte_rate(p.rx_bytes),
                count_rate(p.tx_packets),
                byte_rate(p.tx_bytes),
                count_rate(p.drops),
                count_rate(p.denials),
            ]),
            None => cells.extend(std::iter::repeat_n("-".to_string(), 6)),
        }
        t.row(cells);
    }
    t.render()
}

/// The live view's lines: a title with the time of the reading, a blank line, the table.
pub fn frame(rows: &[Row], interval: Duration, at: SystemTime) -> Vec<String> {
    let mut lines = vec![
        format!(
            "tetherctl top  {}  every {:?}  {} container{}  (q quits)",
            humantime::format_rfc3339_seconds(at),
            interval,
            rows.len(),
            if rows.len() == 1 { "" } else { "s" }
        ),
        String::new(),
    ];
    lines.extend(table(rows).lines().map(str::to_string));
    lines
}

/// One stats reading and when it was taken.
struct Reading {
    at: Instant,
    stats: Vec<ContainerStatsInfo>,
}

impl Reading {
    async fn take(client: &Client) -> Result<Reading, CtlError> {
        let stats = client.stats(None).await?;
        Ok(Reading {
            at: Instant::now(),
            stats,
        })
    }

    fn rows_since(&self, earlier: &Reading) -> Vec<Row> {
        rows(&earlier.stats, &self.stats, self.at - earlier.at)
    }

    /// Rows with no rates yet (the first frame).
    fn rows_alone(&self) -> Vec<Row> {
        let mut r = rows(&[], &self.stats, Duration::from_secs(1));
        r.sort_by(|a, b| a.id.cmp(&b.id));
        r
    }
}

fn terminal_error(source: std::io::Error) -> CtlError {
    CtlError::Io {
        what: "drive the terminal",
        path: PathBuf::from("/dev/tty"),
        source,
    }
}

/// The terminal in raw mode on the alternate screen, cursor hidden; dropping it restores
/// the screen and mode the shell had.
struct Screen {
    out: std::io::Stdout,
}

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        terminal::enable_raw_mode()?;
        let mut out = std::io::stdout();
        if let Err(e) = execute!(out, EnterAlternateScreen, cursor::Hide) {
            let _ = terminal::disable_raw_mode();
            return Err(e);
        }
        Ok(Screen { out })
    }

    /// Draws `lines` from the top left, each cut to the width, as many as fit.
    fn draw(&mut self, lines: &[String]) -> std::io::Result<()> {
        let (w, h) = terminal::size().unwrap_or((80, 24));
        for (y, line) in lines.iter().take(usize::from(h)).enumerate() {
            let cut: String = line.chars().take(usize::from(w)).collect();
            let y = u16::try_from(y).unwrap_or(u16::MAX);
            queue!(
                self.out,
                cursor::MoveTo(0, y),
                Print(cut),
                Clear(ClearType::UntilNewLine)
            )?;
        }
        queue!(self.out, Clear(ClearType::FromCursorDown))?;
        self.out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(self.out, cursor::Show, LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

/// Why the wait between two readings ended.
enum Wake {
    Tick,
    Resize,
    Quit,
}

fn quits(k: &KeyEvent) -> bool {
    k.kind != KeyEventKind::Release
        && (matches!(k.code, KeyCode::Char('q' | 'Q'))
            || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
}

/// Blocking: reads keys until `until` (Tick), a resize, or `q` / Ctrl-C (raw mode turns
/// Ctrl-C into a key instead of SIGINT).
fn wait_key(until: Instant) -> std::io::Result<Wake> {
    loop {
        if !event::poll(until.saturating_duration_since(Instant::now()))? {
            return Ok(Wake::Tick);
        }
        match event::read()? {
            Event::Key(k) if quits(&k) => return Ok(Wake::Quit),
            Event::Resize(..) => return Ok(Wake::Resize),
            _ => {}
        }
    }
}

/// Completes on SIGTERM, SIGINT or SIGHUP (the terminal went away), so the terminal is
/// restored on those too.
async fn stopped() -> Result<(), CtlError> {
    let sig = |kind, name: &'static str| {
        signal(kind).map_err(|source| CtlError::Io {
            what: "install handler for",
            path: PathBuf::from(name),
            source,
        })
    };
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
    Ok(())
}

/// Runs `tetherctl top`: the live view on a terminal, else (or with `no_stream`, or
/// `json`: one object per line per container) one table of the rates over one interval.
pub async fn run(
    client: &Client,
    interval: Duration,
    no_stream: bool,
    json: bool,
) -> Result<(), CtlError> {
    let mut earlier = Reading::take(client).await?;
    if no_stream || json || !std::io::stdout().is_terminal() {
        tokio::time::sleep(interval).await;
        let rows = Reading::take(client).await?.rows_since(&earlier);
        let text = if json {
            rows.iter()
                .map(|r| serde_json::to_string(r).unwrap_or_default() + "\n")
                .collect()
        } else {
            table(&rows)
        };
        return super::print(&text);
    }

    let stop = stopped();
    tokio::pin!(stop);
    let mut screen = Screen::enter().map_err(terminal_error)?;
    let mut rows = earlier.rows_alone();
    let mut at = SystemTime::now();
    let mut until = earlier.at + interval;
    loop {
        screen
            .draw(&frame(&rows, interval, at))
            .map_err(terminal_error)?;
        let wake = tokio::select! {
            w = tokio::task::spawn_blocking(move || wait_key(until)) => w,
            r = &mut stop => return r,
        };
        match wake {
            Ok(Ok(Wake::Quit)) => return Ok(()),
            Ok(Ok(Wake::Resize)) => continue,
            Ok(Ok(Wake::Tick)) => {}
            Ok(Err(e)) => return Err(terminal_error(e)),
            Err(e) => return Err(terminal_error(std::io::Error::other(e))),
        }
        let now = Reading::take(client).await?;
        rows = now.rows_since(&earlier);
        at = SystemTime::now();
        until = now.at + interval;
        earlier = now;
    }
}

/// `--interval`: seconds, at least 0.1.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d >= Duration::from_millis(100))
        .ok_or_else(|| format!("{s:?}: at least 0.1 seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(id: &str, cgroup_id: u64, total: Counters) -> ContainerStatsInfo {
        ContainerStatsInfo {
            id: id.into(),
            namespace: "default".into(),
            cgroup_id,
            total,
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_sorted_by_traffic() {
        let before = [
            stats("quiet", 1, Counters::default()),
            stats("busy", 2, Counters::default()),
            stats(
                "replaced",
                3,
                Counters {
                    rx_bytes: 100,
                    ..Default::default()
                },
            ),
        ];
        let mut gone = stats("gone", 4, Counters::default());
        gone.deleted = true;
        let after = [
            stats(
                "quiet",
                1,
                Counters {
                    tx_packets: 1,
                    tx_bytes: 60,
                    ..Default::default()
                },
            ),
            stats(
                "busy",
                2,
                Counters {
                    rx_packets: 20,
                    rx_bytes: 30_000,
                    tx_packets: 10,
                    tx_bytes: 1_000,
                    drops: 4,
                    denials: 2,
                    ..Default::default()
                },
            ),
            stats(
                "replaced",
                5,
                Counters {
                    rx_bytes: 10,
                    ..Default::default()
                },
            ),
            stats("new", 6, Counters::default()),
            gone,
        ];
        let r = rows(&before, &after, Duration::from_secs(2));
        let ids: Vec<&str> = r.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["busy", "quiet", "new", "replaced"]);
        assert_eq!(
            r[0].rate,
            Some(PerSecond {
                rx_packets: 10.0,
                rx_bytes: 15_000.0,
                tx_packets: 5.0,
                tx_bytes: 500.0,
                drops: 2.0,
                denials: 1.0,
            })
        );
        assert_eq!(r[2].rate, None);

        let text = table(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "CONTAINER",
                "NAMESPACE",
                "RX",
                "PKT/s",
                "RX",
                "TX",
                "PKT/s",
                "TX",
                "DROPS/s",
                "DENIALS/s"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["busy", "default", "10", "14.6", "KiB/s", "5.0", "500", "B/s", "2.0", "1.0"]
        );
        assert!(lines[3].ends_with("-          -"), "{text}");
    }

    #[test]
    fn frame_has_a_title_and_the_table() {
        let r = [Row {
            id: "0123456789abcdef".into(),
            namespace: "k8s.io".into(),
            rate: None,
        }];
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let f = frame(&r, Duration::from_secs(1), at);
        assert_eq!(
            f[0],
            "tetherctl top  2023-11-14T22:13:20Z  every 1s  1 container  (q quits)"
        );
        assert!(f[2].starts_with("CONTAINER"));
        assert!(f[3].starts_with("0123456789ab  k8s.io"));
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("x").is_err());
    }
}
