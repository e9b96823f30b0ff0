//! The escape test's network: a receiving namespace that holds the denied and the allowed
//! addresses, reached through a veth either from a container's own namespace (made here,
//! given to the container by path, or the one runc made for a running container, which
//! gets the veth late, as `docker network connect` gives one) or from the host's (for
//! host-network containers). Everything is removed on drop.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::Targets;
use crate::process;

/// The veth pair, its namespaces and addresses.
pub struct Field {
    /// The container's namespace, bound at `/run/netns/<name>`; `None` for the host's.
    container_ns: Option<String>,
    /// The process whose namespace `container_ns` names (`ip netns attach`), if it was not
    /// made here.
    container_pid: Option<u32>,
    receiver_ns: String,
    /// The host's end of the veth, for a host-network container.
    host_veth: Option<String>,
    receiver_veth: String,
    pub targets: Targets,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Field {
    /// A container namespace `tesc<n>c` and a receiving one `tesc<n>r`, subnet
    /// 10.251.`n`.0/24 and fd00:7e:`n`::/64; the container's interface is `eth0`.
    pub fn netns(n: u8) -> Result<Self> {
        Self::make(n, false, None)
    }

    /// A receiving namespace `tesc<n>r` reached from the host through `tesc<n>h`.
    pub fn host(n: u8) -> Result<Self> {
        Self::make(n, true, None)
    }

    /// As [`Field::netns`], the container's namespace being that of running process `pid`
    /// (named `tesc<n>c` here): its `eth0` arrives while it runs.
    pub fn late(n: u8, pid: u32) -> Result<Self> {
        Self::make(n, false, Some(pid))
    }

    fn make(n: u8, host: bool, container_pid: Option<u32>) -> Result<Self> {
        let receiver_ns = format!("tesc{n}r");
        let container_ns = (!host).then(|| format!("tesc{n}c"));
        let host_veth = host.then(|| format!("tesc{n}h"));
        let iface = host_veth.clone().unwrap_or_else(|| "eth0".into());
        // What a killed earlier run left.
        for ns in [Some(&receiver_ns), container_ns.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = ip(&["netns", "del", ns]);
        }
        if let Some(h) = &host_veth {
            let _ = ip(&["link", "del", h]);
        }
        let field = Field {
            container_ns,
            container_pid,
            receiver_ns,
            host_veth,
            receiver_veth: "rx0".into(),
            targets: Targets {
                iface,
                own4: Ipv4Addr::new(10, 251, n, 1),
                denied4: Ipv4Addr::new(10, 251, n, 2),
                allowed4: Ipv4Addr::new(10, 251, n, 3),
                own6: format!("fd00:7e:{n}::1").parse()?,
                denied6: format!("fd00:7e:{n}::2").parse()?,
                allowed6: format!("fd00:7e:{n}::3").parse()?,
                port_base: 47000,
            },
        };
        field.build()?;
        Ok(field)
    }

    fn build(&self) -> Result<()> {
        let r = self.receiver_ns.as_str();
        let t = &self.targets;
        ip(&["netns", "add", r])?;
        // The sender's end: `ip` (host) or `ip -n C`.
        let mut on_sender: Vec<&str> = Vec::new();
        match &self.container_ns {
            Some(c) => {
                match self.container_pid {
                    Some(pid) => ip(&["netns", "attach", c, &pid.to_string()])?,
                    None => ip(&["netns", "add", c])?,
                }
                on_sender.extend(["-n", c.as_str()]);
                ip(&[
                    "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "rx0", "netns",
                    r,
                ])?;
                ip(&["-n", c, "link", "set", "lo", "up"])?;
            }
            None => ip(&[
                "link", "add", &t.iface, "type", "veth", "peer", "name", "rx0", "netns", r,
            ])?,
        }
        let own4 = format!("{}/24", t.own4);
        let own6 = format!("{}/64", t.own6);
        for args in [
            vec!["addr", "add", own4.as_str(), "dev", t.iface.as_str()],
            vec![
                "addr",
                "add",
                own6.as_str(),
                "dev",
                t.iface.as_str(),
                "nodad",
            ],
            vec!["link", "set", t.iface.as_str(), "up"],
        ] {
            let mut a = on_sender.clone();
            a.extend(args);
            ip(&a)?;
        }
        for addr in [
            format!("{}/24", t.denied4),
            format!("{}/24", t.allowed4),
            format!("{}/64", t.denied6),
            format!("{}/64", t.allowed6),
        ] {
            let mut a = vec!["-n", r, "addr", "add", addr.as_str(), "dev", "rx0"];
            if addr.contains(':') {
                a.push("nodad");
            }
            ip(&a)?;
        }
        ip(&["-n", r, "link", "set", "rx0", "up"])?;
        ip(&["-n", r, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The container's namespace, as `ctr run --with-ns network:PATH` takes it.
    pub fn container_netns(&self) -> Option<PathBuf> {
        self.container_ns
            .as_ref()
            .map(|c| Path::new("/run/netns").join(c))
    }

    /// Starts the receiver (`probe receive`) in the receiving namespace; it counts until
    /// [`Receiver::finish`].
    pub fn receive(&self, probe: &Path) -> Result<Receiver> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.receiver_ns])
            .arg(probe)
            .args([
                "receive",
                &self.receiver_veth,
                &self.targets.port_base.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} receive", probe.display()))?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().map(BufReader::new);
        let mut line = String::new();
        if let Some(out) = stdout.as_mut() {
            // READY comes at once, or the receiver failed and its stdout ends.
            out.read_line(&mut line)?;
        }
        if line.trim() != "READY" {
            let err = child
                .stderr
                .take()
                .map(|mut e| {
                    let mut s = String::new();
                    let _ = std::io::Read::read_to_string(&mut e, &mut s);
                    s
                })
                .unwrap_or_default();
            process::kill_and_reap(&mut child);
            bail!("the receiver did not start: {line}{err}");
        }
        Ok(Receiver {
            child,
            stdin,
            stdout,
        })
    }
}

impl Drop for Field {
    fn drop(&mut self) {
        for ns in [Some(&self.receiver_ns), self.container_ns.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("escape field: {e:#}");
            }
        }
        // Deleting the receiver's namespace took the host's end of the veth with it.
        if let Some(h) = &self.host_veth {
            let _ = ip(&["link", "del", h]);
        }
    }
}

/// A running receiver.
pub struct Receiver {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Receiver {
    /// Stops counting (after a moment for frames in flight) and returns its output.
    pub fn finish(mut self) -> Result<String> {
        std::thread::sleep(Duration::from_millis(500));
        drop(self.stdin.take());
        let mut text = String::new();
        if let Some(out) = self.stdout.as_mut() {
            std::io::Read::read_to_string(out, &mut text)?;
        }
        let status = process::wait_with_deadline(&mut self.child, Duration::from_secs(10))?;
        ensure!(status.success(), "the receiver failed ({status}): {text}");
        Ok(text)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            process::kill_and_reap(&mut self.child);
        }
    }
}
