//! The `start` action: containerd's handshake with a new shim.
//!
//! containerd runs `containerd-shim-tether-v1 start` in the bundle and reads the shim's
//! address from its stdout. Two protocols exist and tether speaks both:
//! - **Bootstrap** (containerd 2.3+): a protobuf `BootstrapParams` on stdin naming this
//!   instance; the reply is a protobuf `BootstrapResult` (task API version 3).
//! - **Legacy** (containerd 1.6, 1.7, 2.0-2.2): flags and environment, the runtime
//!   options (if any) as a protobuf `Any` on stdin; the reply is the plain address.
//!   containerd 1.6 accepts nothing else (a JSON reply fails with `dial unix
//!   {"address":...}: invalid argument`), and 1.7/2.x read a plain address as a task
//!   API v2 shim, which tether also serves (see `serve`), so one reply fits them all.

use std::{
    io::{IsTerminal, Read},
    path::Path,
    process::{Command, Stdio},
};

use containerd_shim::{
    protos::{
        bootstrap_api::{BootstrapParams, BootstrapResult},
        protobuf::{well_known_types::any::Any, Message},
        TASK_API_VERSION,
    },
    Flags, StartOpts,
};

use crate::{
    container::load_spec,
    error::{Error, Result},
    options::ShimOptions,
};

const MAX_INPUT: u64 = 10 << 20;

/// Spec annotations (and the runc shim's label) that put containers in one shim.
pub const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Bootstrap,
    Legacy,
}

/// What containerd told `start`, normalized over both protocols.
#[derive(Debug)]
pub struct StartParams {
    pub protocol: Protocol,
    pub ttrpc_address: String,
    pub grpc_address: String,
    pub socket_dir: Option<String>,
    pub debug: bool,
    pub options: Option<Any>,
}

/// Decodes `start`'s stdin. `env_ttrpc` is `$TTRPC_ADDRESS` (legacy protocol).
pub fn parse_start_input(input: &[u8], flags: &Flags, env_ttrpc: &str) -> Result<StartParams> {
    if !input.is_empty() {
        if let Ok(p) = BootstrapParams::parse_from_bytes(input) {
            if p.instance_id == flags.id && p.namespace == flags.namespace {
                if p.containerd_ttrpc_address.is_empty() {
                    return Err(Error::InvalidArgument(
                        "bootstrap params carry no containerd TTRPC address".into(),
                    ));
                }
                let debug = flags.debug || p.log_level.value() <= -4; // LOG_LEVEL_DEBUG
                return Ok(StartParams {
                    protocol: Protocol::Bootstrap,
                    ttrpc_address: p.containerd_ttrpc_address,
                    grpc_address: p.containerd_grpc_address,
                    socket_dir: p.socket_dir.filter(|d| !d.is_empty()),
                    debug,
                    options: p
                        .extensions
                        .into_iter()
                        .filter_map(|e| e.value.into_option())
                        .find(|a| ShimOptions::from_any(Some(a)).is_ok()),
                });
            }
        }
    }
    if env_ttrpc.is_empty() {
        return Err(Error::InvalidArgument(
            "TTRPC_ADDRESS is not set and no bootstrap params were given".into(),
        ));
    }
    let options = Any::parse_from_bytes(input)
        .ok()
        .filter(|a| !a.type_url.is_empty());
    Ok(StartParams {
        protocol: Protocol::Legacy,
        ttrpc_address: env_ttrpc.to_string(),
        grpc_address: flags.address.clone(),
        socket_dir: None,
        debug: flags.debug,
        options,
    })
}

/// The reply containerd expects for `protocol`.
pub fn encode_reply(address: &str, protocol: Protocol) -> Result<Vec<u8>> {
    match protocol {
        Protocol::Legacy => Ok(address.as_bytes().to_vec()),
        Protocol::Bootstrap => BootstrapResult {
            version: TASK_API_VERSION,
            address: address.to_string(),
            protocol: "ttrpc".into(),
            ..Default::default()
        }
        .write_to_bytes()
        .map_err(|source| Error::Decode {
            what: "bootstrap result",
            source,
        }),
    }
}

/// The shim group of the container in `bundle`: its group annotation, else its id.
pub fn grouping(bundle: &Path, id: &str) -> String {
    load_spec(bundle)
        .ok()
        .and_then(|s| {
            GROUP_LABELS
                .iter()
                .find_map(|l| s.annotations().get(*l).cloned())
        })
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| id.to_string())
}

fn read_stdin() -> Result<Vec<u8>> {
    let stdin = std::io::stdin();
    let mut input = Vec::new();
    if !stdin.is_terminal() {
        stdin
            .lock()
            .take(MAX_INPUT)
            .read_to_end(&mut input)
            .map_err(|e| Error::io("read start parameters from stdin", e))?;
    }
    Ok(input)
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

fn is_serving(address: &str) -> bool {
    std::os::unix::net::UnixStream::connect(socket_path(address)).is_ok()
}

/// Runs the `start` action: finds or spawns the shim server for this container's
/// group, records its address in the bundle and returns the reply for containerd.
pub fn start(flags: &Flags) -> Result<Vec<u8>> {
    let input = read_stdin()?;
    let params = parse_start_input(
        &input,
        flags,
        &std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
    )?;
    let bundle = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    let group = grouping(&bundle, &flags.id);
    let opts = StartOpts {
        id: flags.id.clone(),
        address: params.grpc_address.clone(),
        namespace: flags.namespace.clone(),
        socket_dir: params.socket_dir.clone(),
        ..Default::default()
    };
    let address = opts.socket_address(&group);

    if !is_serving(&address) {
        spawn_server(flags, &params, &address, &bundle)?;
    }
    std::fs::write(bundle.join("address"), &address)
        .map_err(|e| Error::io("write the address file", e))?;
    encode_reply(&address, params.protocol)
}

fn spawn_server(flags: &Flags, params: &StartParams, address: &str, bundle: &Path) -> Result<()> {
    let path = socket_path(address);
    // A socket nobody answers on is left over from a dead shim.
    if Path::new(path).exists() {
        let _ = std::fs::remove_file(path);
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("find own executable", e))?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("TTRPC_ADDRESS", &params.ttrpc_address)
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &params.grpc_address, "-socket", address]);
    if params.debug {
        cmd.arg("-debug");
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| Error::io("spawn shim server", e))?;
    // The server closes its stdout once it listens (or exits): read to EOF.
    let mut out = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_end(&mut out);
    }
    if let Ok(Some(status)) = child.try_wait() {
        if !status.success() {
            return Err(Error::FailedPrecondition(format!(
                "shim server exited with {status} before serving {address}"
            )));
        }
    }
    let shim_cgroup = ShimOptions::from_any(params.options.as_ref())
        .map(|o| o.shim_cgroup)
        .unwrap_or_default();
    if let Err(e) = containerd_shim::cgroup::set_cgroup_and_oom_score(child.id(), &shim_cgroup) {
        let _ = child.kill();
        return Err(Error::framework("move shim into its cgroup", e));
    }
    std::fs::write(bundle.join("shim.pid"), child.id().to_string())
        .map_err(|e| Error::io("write shim.pid", e))?;
    if !is_serving(address) {
        return Err(Error::FailedPrecondition(format!(
            "shim server is not serving {address}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::{
        bootstrap_api::{Extension, LogLevel},
        protobuf::EnumOrUnknown,
        shim::oci::Options,
    };

    use super::*;

    fn flags() -> Flags {
        Flags {
            id: "c1".into(),
            namespace: "default".into(),
            address: "/run/containerd/containerd.sock".into(),
            ..Default::default()
        }
    }

    const TTRPC: &str = "/run/containerd/containerd.sock.ttrpc";

    #[test]
    fn containerd_1_6_and_1_7_legacy_plain_address() {
        // No stdin (no runtime options): legacy, plain address reply.
        let p = parse_start_input(&[], &flags(), TTRPC).unwrap();
        assert_eq!(p.protocol, Protocol::Legacy);
        assert_eq!(p.ttrpc_address, TTRPC);
        assert_eq!(p.grpc_address, "/run/containerd/containerd.sock");
        let reply = encode_reply("unix:///run/containerd/s/abc", p.protocol).unwrap();
        assert_eq!(reply, b"unix:///run/containerd/s/abc");
    }

    #[test]
    fn legacy_with_runtime_options_on_stdin() {
        let opts = Options {
            shim_cgroup: "/shims".into(),
            ..Default::default()
        };
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: opts.write_to_bytes().unwrap(),
            ..Default::default()
        };
        let p = parse_start_input(&any.write_to_bytes().unwrap(), &flags(), TTRPC).unwrap();
        assert_eq!(p.protocol, Protocol::Legacy);
        let o = ShimOptions::from_any(p.options.as_ref()).unwrap();
        assert_eq!(o.shim_cgroup, "/shims");
    }

    #[test]
    fn legacy_needs_ttrpc_address() {
        let e = parse_start_input(&[], &flags(), "").unwrap_err();
        assert!(e.to_string().contains("TTRPC_ADDRESS"));
    }

    #[test]
    fn containerd_2_3_bootstrap_protocol() {
        let params = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "default".into(),
            log_level: EnumOrUnknown::new(LogLevel::LOG_LEVEL_DEBUG),
            containerd_ttrpc_address: TTRPC.into(),
            containerd_grpc_address: "/run/containerd/containerd.sock".into(),
            socket_dir: Some("/run/containerd/s2".into()),
            extensions: vec![Extension {
                value: Some(Any {
                    type_url: "containerd.runc.v1.Options".into(),
                    value: Options {
                        binary_name: "runc".into(),
                        ..Default::default()
                    }
                    .write_to_bytes()
                    .unwrap(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        // Empty env: the bootstrap params carry the address.
        let p = parse_start_input(&params.write_to_bytes().unwrap(), &flags(), "").unwrap();
        assert_eq!(p.protocol, Protocol::Bootstrap);
        assert!(p.debug);
        assert_eq!(p.socket_dir.as_deref(), Some("/run/containerd/s2"));
        assert!(p.options.is_some());
        let reply = encode_reply("unix:///run/containerd/s2/abc", p.protocol).unwrap();
        let r = BootstrapResult::parse_from_bytes(&reply).unwrap();
        assert_eq!(r.version, 3);
        assert_eq!(r.address, "unix:///run/containerd/s2/abc");
        assert_eq!(r.protocol, "ttrpc");
    }

    #[test]
    fn bootstrap_params_for_another_instance_fall_back_to_legacy() {
        let params = BootstrapParams {
            instance_id: "other".into(),
            namespace: "default".into(),
            containerd_ttrpc_address: TTRPC.into(),
            log_level: EnumOrUnknown::new(LogLevel::LOG_LEVEL_INFO),
            ..Default::default()
        };
        let p = parse_start_input(&params.write_to_bytes().unwrap(), &flags(), TTRPC).unwrap();
        assert_eq!(p.protocol, Protocol::Legacy);
    }

    #[test]
    fn grouping_uses_annotations() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "c1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "pod1");
    }
}
