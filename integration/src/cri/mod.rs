//! A Kubernetes node without kubelet: a private containerd with its CRI plugin on, the
//! runtime handlers `runc` (`io.containerd.runc.v2`) and `tether` (from the snippet that
//! `packaging/install.sh` appends to a node's config), a CNI bridge network of its own, the
//! busybox and pause images imported, and a [`CriClient`] to play kubelet's part.
//!
//! [`CriNode`] owns all of it and, on drop, removes every pod through the CRI (as kubelet
//! would: CNI teardown, netns, shims), the bridge, the pods' cgroup parents, then the daemon.

pub mod client;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

pub use client::{container_config, pod_config, CriClient, CriError, ExecResult};

use crate::containerd::Containerd;
use crate::containerd_release::{self, Release};
use crate::{cgroup, image, process, rootfs};

/// The namespace the CRI plugin keeps its containers and images in.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The runtime handlers the node offers.
pub const RUNC_HANDLER: &str = "runc";
pub const TETHER_HANDLER: &str = "tether";
/// The packaged containerd snippets, the one per config format.
const SNIPPET_V2: &str = include_str!("../../../packaging/containerd/config-1.x.toml");
const SNIPPET_V3: &str = include_str!("../../../packaging/containerd/config-2.x.toml");
/// Where the packaged snippet points tether's shims for their config.
const PACKAGED_CONFIG_PATH: &str = "/etc/tether/config.toml";
/// Deadline of the `ip` calls.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// A CRI node; see the module docs.
pub struct CriNode {
    pub cri: CriClient,
    // Dropped after the pods are gone (see Drop), before `dir`.
    containerd: Option<Containerd>,
    /// This node's number: its bridge, subnet and cgroup parent.
    n: u32,
    /// systemd is PID 1: pods' cgroups are systemd slices and scopes, as under kubelet's
    /// systemd cgroup driver (runc's handler gets `SystemdCgroup = true`, as kubeadm sets
    /// it); else cgroupfs paths.
    systemd: bool,
    dir: TempDir,
}

impl CriNode {
    /// Starts the node: network config, containerd with CRI, images.
    pub fn start() -> Result<Self> {
        static NODES: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() + NODES.fetch_add(1, Ordering::Relaxed)) % 200;
        let dir = tempfile::Builder::new()
            .prefix("tether-cri-")
            .tempdir()
            .context("creating the CRI node's directory")?;
        let bridge = bridge_name(n);
        // A bridge of this name is a leftover of a killed run of this test: its pods are gone.
        if Path::new("/sys/class/net").join(&bridge).exists() {
            delete_link(&bridge)?;
        }
        write_cni_config(dir.path(), n)?;
        let release = containerd_release::release()?;
        let conf_dir = dir.path().join("net.d");
        let systemd = Path::new("/run/systemd/system").is_dir();
        let containerd = Containerd::start_with_cri(Vec::new(), &|cd| {
            Ok(cri_config(
                &release,
                &conf_dir,
                &cd.tether_config(),
                systemd,
            ))
        })?;
        // tetherd (started by the first shim that needs it) serves metrics here.
        let metrics = dir.path().join("metrics.sock");
        let config = containerd.tether_config();
        let text =
            fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
        let text = text.replacen(
            "[broker]\n",
            &format!("[broker]\nmetrics = \"unix:{}\"\n", metrics.display()),
            1,
        );
        fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let cri = CriClient::connect(&containerd.address())?;
        let node = CriNode {
            cri,
            containerd: Some(containerd),
            n,
            systemd,
            dir,
        };
        node.import_images()?;
        Ok(node)
    }

    pub fn containerd(&self) -> &Containerd {
        // Only None while dropping.
        self.containerd
            .as_ref()
            .expect("the node's containerd lives as long as the node")
    }

    /// The gateway of the pods' subnet: the node's bridge address.
    pub fn gateway(&self) -> String {
        format!("10.216.{}.1", self.n)
    }

    /// A cgroup parent for pod `uid`, as kubelet's driver names it: a slice
    /// (`tethercriN-pod<uid>.slice`, dashes in the uid made underscores, as kubelet does)
    /// under systemd, else a path.
    pub fn cgroup_parent(&self, uid: &str) -> String {
        if self.systemd {
            format!("{}-pod{}.slice", self.slice_root(), uid.replace('-', "_"))
        } else {
            format!("/{}/pod{uid}", self.cgroup_root())
        }
    }

    /// Whether the node's pods are in systemd slices (systemd is PID 1).
    pub fn systemd(&self) -> bool {
        self.systemd
    }

    fn cgroup_root(&self) -> String {
        format!("tether-cri-{}-{}", std::process::id(), self.n)
    }

    /// The node's slice (without `.slice`): its pods' slices are below it.
    fn slice_root(&self) -> String {
        format!("tethercri{}x{}", std::process::id(), self.n)
    }

    /// The directory for pod `name`'s logs (created).
    pub fn log_dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.path().join("logs").join(name);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    /// A pod's config on this node: its logs here, its cgroup under this node's parent.
    pub fn pod_config(
        &self,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> Result<k8s_cri::v1::PodSandboxConfig> {
        let uid = format!("{name}-uid-{}", self.n);
        Ok(pod_config(
            name,
            "tether-test",
            &uid,
            &self.log_dir(name)?,
            &self.cgroup_parent(&uid),
            owned(annotations),
        ))
    }

    /// A container of the busybox image running `sh -c script`.
    pub fn container_config(
        &self,
        name: &str,
        script: &str,
        annotations: &[(&str, &str)],
    ) -> k8s_cri::v1::ContainerConfig {
        container_config(name, image::BUSYBOX_IMAGE, script, owned(annotations))
    }

    /// A container `name` running `script` in pod `pod` (made from `pod_cfg`), with a
    /// memory limit of `memory_limit` bytes, created and started: its id and its pid.
    pub fn start_limited(
        &self,
        pod: &str,
        pod_cfg: &k8s_cri::v1::PodSandboxConfig,
        name: &str,
        script: &str,
        memory_limit: i64,
    ) -> Result<(String, u32)> {
        let mut c = self.container_config(name, script, &[]);
        if let Some(linux) = c.linux.as_mut() {
            linux.resources = Some(k8s_cri::v1::LinuxContainerResources {
                memory_limit_in_bytes: memory_limit,
                ..Default::default()
            });
        }
        let id = self.cri.create_container(pod, &c, pod_cfg)?;
        self.cri.start_container(&id)?;
        let pid = self.cri.container_pid(&id)?;
        Ok((id, pid))
    }

    /// Sets the node's `[attach]` section of tether's config (what the shims of later
    /// containers read), keeping the fixture's attach deadline if it set one.
    pub fn set_attach_config(&self, attach: &str) -> Result<()> {
        let path = self.containerd().tether_config();
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut parts = text.splitn(2, "[attach]");
        let head = parts.next().unwrap_or_default().to_owned();
        let deadline = parts
            .next()
            .and_then(|a| a.lines().find(|l| l.starts_with("deadline_ms")))
            .map(|l| format!("{l}\n"))
            .unwrap_or_default();
        fs::write(&path, format!("{head}[attach]\n{deadline}{attach}"))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The body of tetherd's `GET /metrics`.
    pub fn scrape_metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let path = self.dir.path().join("metrics.sock");
        let mut s = std::os::unix::net::UnixStream::connect(&path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tetherd\r\nConnection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)
            .context("reading the metrics reply")?;
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .with_context(|| format!("no HTTP reply: {resp}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET /metrics: {head}");
        }
        Ok(body.to_owned())
    }

    /// tetherd's audit log: one JSON event per line.
    pub fn audit_log(&self) -> String {
        let path = self
            .containerd()
            .tether_config()
            .with_file_name("tetherd")
            .join("audit.jsonl");
        fs::read_to_string(path).unwrap_or_default()
    }

    /// Addresses the node's CNI network has handed out and not taken back.
    pub fn leased_addresses(&self) -> Vec<String> {
        let dir = self
            .dir
            .path()
            .join("ipam")
            .join(format!("tether-cri-{}", self.n));
        fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What container `name` of pod `pod` wrote to its log so far (the messages, without
    /// the CRI log format's timestamp, stream and tag).
    pub fn log_of(&self, pod: &str, name: &str) -> Result<String> {
        let path = self
            .dir
            .path()
            .join("logs")
            .join(pod)
            .join(format!("{name}.log"));
        let text = fs::read_to_string(&path).unwrap_or_default();
        Ok(text
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    fn import_images(&self) -> Result<()> {
        let ctr = self.containerd().ctr(K8S_NAMESPACE);
        let rootfs = rootfs::build_busybox(&self.dir.path().join("rootfs"))?;
        let work = self.dir.path().join("image");
        image::import(&ctr, &rootfs, image::BUSYBOX_IMAGE, &work.join("busybox"))?;
        image::import_with_cmd(
            &ctr,
            &rootfs,
            image::PAUSE_IMAGE,
            &image::PAUSE_CMD,
            &work.join("pause"),
        )?;
        for name in [image::BUSYBOX_IMAGE, image::PAUSE_IMAGE] {
            crate::wait::wait_until("the CRI to see the images", Duration::from_secs(20), || {
                Ok(self.cri.image_present(name)?.then_some(()))
            })?;
        }
        Ok(())
    }

    /// Removes every pod through the CRI; the first error.
    pub fn remove_all_pods(&self) -> Result<()> {
        let mut first = None;
        for pod in self.cri.list_pods()? {
            if let Err(e) = self.cri.tear_down_pod(&pod) {
                eprintln!("cri node: removing pod {pod}: {e:#}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all_pods() {
            eprintln!("cri node cleanup: {e:#}");
        }
        // The daemon and what is left of its containers.
        drop(self.containerd.take());
        let bridge = bridge_name(self.n);
        if Path::new("/sys/class/net").join(&bridge).exists() {
            if let Err(e) = delete_link(&bridge) {
                eprintln!("cri node cleanup: {e:#}");
            }
        }
        if self.systemd {
            let slice = format!("{}.slice", self.slice_root());
            let _ = process::run(
                Command::new("systemctl").args(["stop", &slice]),
                None,
                IP_TIMEOUT,
            );
        } else if let Ok(hierarchies) = cgroup::hierarchies() {
            for h in hierarchies {
                remove_empty_tree(&h.mount_point.join(self.cgroup_root()));
            }
        }
    }
}

/// The CRI part of a node's config in `release`'s format: the pause image, the runc
/// handler, CNI from `conf_dir`, a loopback stream server, and tether's packaged snippet
/// with its config path pointed at `tether_config`. The OOM score adjustments that kubelet
/// asks for (-998 for a sandbox) are kept no lower than the daemon's own, as on nodes that
/// run in a container: test machines may lack CAP_SYS_RESOURCE. With `systemd`, runc's
/// handler uses systemd's cgroup driver, as kubeadm configures it on a systemd node.
pub fn cri_config(
    release: &Release,
    conf_dir: &Path,
    tether_config: &Path,
    systemd: bool,
) -> String {
    // 2.x (config version 3) splits the CRI plugin: images, runtime, and the gRPC server
    // (the stream server's settings); 1.x has one table for all of it.
    let v3 = release.config_version() >= 3;
    let pause = image::PAUSE_IMAGE;
    let mut head = String::new();
    let runtime = if v3 {
        head.push_str(&format!(
            "[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"{pause}\"\n\
             [plugins.\"io.containerd.cri.v1.runtime\"]\n  restrict_oom_score_adj = true\n"
        ));
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    };
    head.push_str(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  stream_server_address = \"127.0.0.1\"\n  \
         stream_server_port = \"0\"\n",
    );
    if !v3 {
        head.push_str(&format!(
            "  sandbox_image = \"{pause}\"\n  restrict_oom_score_adj = true\n"
        ));
    }
    // 2.1 reads CNI binaries from a list; 2.0 and 1.x from one directory.
    let bin = if v3 && release.minor >= 1 {
        "bin_dirs = [\"/usr/lib/cni\"]"
    } else {
        "bin_dir = \"/usr/lib/cni\""
    };
    head.push_str(&format!(
        r#"[plugins."{runtime}".containerd]
  default_runtime_name = "runc"
[plugins."{runtime}".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."{runtime}".containerd.runtimes.runc.options]
  SystemdCgroup = {systemd}
[plugins."{runtime}".cni]
  {bin}
  conf_dir = "{conf}"
"#,
        conf = conf_dir.display(),
    ));
    let tether = tether_config.display().to_string();
    format!(
        "{head}\n{}",
        installed_snippet(release.config_version()).replace(PACKAGED_CONFIG_PATH, &tether)
    )
}

/// What `packaging/install.sh` appends to a node's containerd config of format `version`
/// (2 or 3): the packaged snippet without its `version` line.
pub fn installed_snippet(version: u32) -> String {
    let snippet = if version >= 3 { SNIPPET_V3 } else { SNIPPET_V2 };
    snippet
        .lines()
        .filter(|l| !l.starts_with("version"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn bridge_name(n: u32) -> String {
    format!("tethercri{n}")
}

/// The node's CNI network: a bridge of its own, subnet `10.216.N.0/24`, host-local IPAM
/// with its state in the node's directory.
fn write_cni_config(dir: &Path, n: u32) -> Result<()> {
    let conf_dir = dir.join("net.d");
    fs::create_dir_all(&conf_dir).with_context(|| format!("creating {}", conf_dir.display()))?;
    let json = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("tether-cri-{n}"),
        "plugins": [{
            "type": "bridge",
            "bridge": bridge_name(n),
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("10.216.{n}.0/24"), "gateway": format!("10.216.{n}.1")}]],
                "dataDir": dir.join("ipam"),
            }
        }]
    });
    let path = conf_dir.join("10-tether-cri.conflist");
    fs::write(&path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn delete_link(name: &str) -> Result<()> {
    let out = process::run(
        Command::new("ip").args(["link", "delete", name]),
        None,
        IP_TIMEOUT,
    )?;
    if out.code != 0 {
        bail!("ip link delete {name}: {}", out.stderr.trim());
    }
    Ok(())
}

/// Removes `dir` and the empty cgroups below it, deepest first.
fn remove_empty_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

fn owned(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_config_carries_the_packaged_snippet() {
        for v in ["1.6.20", "1.7.24", "2.1.9"] {
            let r = Release::parse(&format!("containerd m {v}")).unwrap();
            let cri = cri_config(&r, Path::new("/n/net.d"), Path::new("/n/tether.toml"), true);
            let base = r.config_toml(Path::new("/r"), Path::new("/s"), Path::new("/c"), true);
            let all = format!("{base}\n{cri}");
            let doc: toml::Table =
                toml::from_str(&all).unwrap_or_else(|e| panic!("{v}: {e}\n{all}"));
            let plugins = &doc["plugins"];
            let runtime = if r.major >= 2 {
                &plugins["io.containerd.cri.v1.runtime"]
            } else {
                &plugins["io.containerd.grpc.v1.cri"]
            };
            let tether = &runtime["containerd"]["runtimes"]["tether"];
            assert_eq!(
                tether["runtime_type"].as_str(),
                Some("io.containerd.tether.v1")
            );
            assert_eq!(
                tether["options"]["ConfigPath"].as_str(),
                Some("/n/tether.toml")
            );
            assert_eq!(runtime["cni"]["conf_dir"].as_str(), Some("/n/net.d"));
            let runc = &runtime["containerd"]["runtimes"]["runc"];
            assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
            assert_eq!(runtime["restrict_oom_score_adj"].as_bool(), Some(true));
            let sandbox = if r.major >= 2 {
                &plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
            } else {
                &runtime["sandbox_image"]
            };
            assert_eq!(sandbox.as_str(), Some(image::PAUSE_IMAGE));
            let grpc = &plugins["io.containerd.grpc.v1.cri"];
            assert_eq!(grpc["stream_server_port"].as_str(), Some("0"));
            let bins = &runtime["cni"];
            assert!(
                bins.get("bin_dirs").or(bins.get("bin_dir")).is_some(),
                "{v}: {bins}"
            );
        }
    }
}
