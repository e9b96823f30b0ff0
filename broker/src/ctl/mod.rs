//! tetherctl: the operator's commands over the broker client. Parses nothing itself
//! (clap does) and prints through `format`; `follow` reads the audit log, `top` draws
//! the live view.

pub mod event;
pub mod follow;
pub mod format;
pub mod pods;
pub mod top;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use tether_api::paths::{self, tetherd_beside_exe};
use tether_api::types::AuditEvent;
use tether_api::Client;

use crate::error::CtlError;

/// tetherctl: inspect and drive tetherd, tether's node daemon.
#[derive(Debug, Parser)]
#[command(name = "tetherctl", version)]
pub struct Cli {
    /// tetherd's socket.
    #[arg(long, global = true, default_value = paths::SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline for connecting and for each call, in seconds.
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS")]
    pub timeout: f64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// tetherd's state: version, counters, pinned versions.
    Status,
    /// Containers tether tracks and their attachments.
    Ps {
        /// One line per attachment under each container.
        #[arg(short = 'v', long = "wide", alias = "verbose")]
        wide: bool,
    },
    /// Per-container traffic counters (of one container if ID is given; a unique prefix
    /// works), of live containers and, marked, of those deleted in the last minutes.
    Stats {
        id: Option<String>,
        /// Only the containers of this Kubernetes pod, and their sum.
        #[arg(long, value_name = "NAME")]
        pod: Option<String>,
        /// Only the containers of pods in this Kubernetes namespace, and their sum.
        #[arg(long = "namespace", value_name = "NS")]
        k8s_namespace: Option<String>,
    },
    /// Live per-container traffic: packets, bytes, drops and denials per second, busiest
    /// first, refreshed in place (q or Ctrl-C quits).
    Top {
        /// Seconds between refreshes, the interval each rate is measured over.
        #[arg(long, default_value = "1", value_parser = top::parse_interval, value_name = "SECONDS")]
        interval: Duration,
        /// Print one table (the rates over one interval) and exit, as when stdout is not
        /// a terminal or with --json (one object per line per container).
        #[arg(long)]
        no_stream: bool,
    },
    /// Audit events from the audit log, followed like `tail -F`.
    Events {
        /// Print what the log holds and exit.
        #[arg(long)]
        no_follow: bool,
        /// The audit log (default: the one tetherd reports).
        #[arg(long, value_name = "PATH")]
        audit_log: Option<PathBuf>,
    },
    /// Remove entries of containers whose cgroup is gone, and unused versions.
    Gc {
        /// Report what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Ask tetherd for the pins of an object version (spawning tetherd if needed).
    Acquire {
        /// Object version (default: tetherd's own).
        version: Option<String>,
        /// The tetherd binary to spawn (default: the one next to tetherctl).
        #[arg(long, value_name = "PATH")]
        tetherd: Option<PathBuf>,
        /// Config file passed to a spawned tetherd.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

fn print(text: &str) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CtlError::Output)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

impl Cli {
    fn deadline(&self) -> Duration {
        Duration::try_from_secs_f64(self.timeout).unwrap_or(Duration::from_secs(10))
    }

    async fn client(&self) -> Result<Client, CtlError> {
        Ok(Client::connect(&self.socket, self.deadline())
            .await?
            .with_timeout(self.deadline()))
    }
}

/// Runs one tetherctl command.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    match &cli.command {
        Command::Status => {
            let s = cli.client().await?.status().await?;
            print(&if cli.json {
                json(&s)
            } else {
                format::status_text(&s)
            })
        }
        Command::Ps { wide } => {
            let c = cli.client().await?.containers().await?;
            print(&if cli.json {
                json(&c)
            } else {
                format::ps_table(&c, *wide)
            })
        }
        Command::Stats {
            id,
            pod,
            k8s_namespace,
        } => {
            let filter = format::PodFilter {
                pod: pod.clone(),
                namespace: k8s_namespace.clone(),
            };
            let mut s = cli.client().await?.stats(id.as_deref()).await?;
            s.retain(|c| filter.keeps(c));
            print(&if cli.json {
                format::stats_json_lines(&s, &filter)
            } else {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                format::stats_table(&s, now, !filter.is_empty())
            })
        }
        Command::Top {
            interval,
            no_stream,
        } => top::run(&cli.client().await?, *interval, *no_stream, cli.json).await,
        Command::Gc { dry_run } => {
            let r = cli.client().await?.gc(*dry_run).await?;
            print(&if cli.json {
                json(&r)
            } else {
                format!(
                    "{}containers: {}\nversions:   {}\nmap entries: {}\n",
                    if *dry_run { "would remove\n" } else { "" },
                    list_or_none(&r.removed_containers),
                    list_or_none(&r.removed_versions),
                    r.removed_map_entries
                )
            })
        }
        Command::Acquire {
            version,
            tetherd,
            config,
        } => {
            let tetherd = match tetherd {
                Some(p) => p.clone(),
                None => tetherd_beside_exe().map_err(CtlError::LocateTetherd)?,
            };
            let client =
                Client::connect_or_spawn(&cli.socket, &tetherd, config.as_deref(), cli.deadline())
                    .await?
                    .with_timeout(cli.deadline());
            let r = client.acquire(version.as_deref().unwrap_or("")).await?;
            print(&if cli.json {
                let mut s = serde_json::to_string(&r).unwrap_or_default();
                s.push('\n');
                s
            } else {
                format::acquire_text(&r)
            })
        }
        Command::Events {
            no_follow,
            audit_log,
        } => {
            let path = match audit_log {
                Some(p) => p.clone(),
                None => PathBuf::from(cli.client().await?.status().await?.audit_log),
            };
            events(&path, !*no_follow, cli.json).await
        }
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(" ")
    }
}

fn event_text(line: &str, raw: bool) -> String {
    if raw {
        return format!("{line}\n");
    }
    match serde_json::from_str::<AuditEvent>(line) {
        Ok(e) => format!("{}\n", event::event_line(&e)),
        Err(_) => format!("{line}\n"),
    }
}

async fn events(path: &Path, follow: bool, raw: bool) -> Result<(), CtlError> {
    let io_err = |source| CtlError::Io {
        what: "read audit log",
        path: path.to_path_buf(),
        source,
    };
    if !follow {
        let text = std::fs::read_to_string(path).map_err(io_err)?;
        let out: String = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| event_text(l, raw))
            .collect();
        return print(&out);
    }
    let mut tail = follow::Tail::from_last_lines(path, follow::BACKLOG_LINES).map_err(io_err)?;
    loop {
        let lines = tail.poll().map_err(io_err)?;
        let out: String = lines.iter().map(|l| event_text(l, raw)).collect();
        if !out.is_empty() {
            print(&out)?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
