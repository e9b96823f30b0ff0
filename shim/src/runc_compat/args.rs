//! `tether-runc`'s view of its command line: runc's global flags, the command and its
//! arguments, with the few values tether needs read out of them (container id, bundle,
//! `--root`, `--log`). Unknown flags are kept as they are and passed through to runc.
use std::ffi::OsString;
use std::path::Path;

/// runc's global flags that take a value.
const GLOBAL_VALUE_FLAGS: &[&str] = &["--log", "--log-format", "--root", "--criu", "--rootless"];
/// Value flags of `create` and `run`.
const CREATE_VALUE_FLAGS: &[&str] = &[
    "--bundle",
    "-b",
    "--console-socket",
    "--pid-file",
    "--preserve-fds",
];

/// A parsed runc command line: global flags, the command, its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuncArgs {
    pub global: Vec<OsString>,
    pub command: Option<String>,
    pub args: Vec<OsString>,
}

/// The name of a flag given as `--name` or `--name=value`.
pub(crate) fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(n, _)| n)
}

fn takes_value(arg: &str, value_flags: &[&str]) -> bool {
    !arg.contains('=') && value_flags.contains(&flag_name(arg))
}

impl RuncArgs {
    pub fn parse(argv: &[OsString]) -> RuncArgs {
        let mut global = Vec::new();
        let mut i = 0;
        while i < argv.len() {
            let a = argv[i].to_string_lossy();
            if !a.starts_with('-') {
                break;
            }
            global.push(argv[i].clone());
            if takes_value(&a, GLOBAL_VALUE_FLAGS) && i + 1 < argv.len() {
                global.push(argv[i + 1].clone());
                i += 1;
            }
            i += 1;
        }
        let command = argv.get(i).map(|c| c.to_string_lossy().into_owned());
        let args = argv
            .get(i + 1..)
            .map(<[OsString]>::to_vec)
            .unwrap_or_default();
        RuncArgs {
            global,
            command,
            args,
        }
    }

    /// The value of a global flag (`--root X` or `--root=X`).
    pub fn global_value(&self, name: &str) -> Option<OsString> {
        value_of(&self.global, name)
    }

    /// The value of a command flag, before the first positional argument.
    pub fn arg_value(&self, names: &[&str]) -> Option<OsString> {
        names.iter().find_map(|n| value_of(self.command_flags(), n))
    }

    fn command_flags(&self) -> &[OsString] {
        let end = self.positional_start();
        &self.args[..end]
    }

    fn positional_start(&self) -> usize {
        let mut i = 0;
        while i < self.args.len() {
            let a = self.args[i].to_string_lossy();
            if !a.starts_with('-') {
                return i;
            }
            if takes_value(&a, CREATE_VALUE_FLAGS) {
                i += 1;
            }
            i += 1;
        }
        self.args.len()
    }

    /// The container id: the first positional argument of the command.
    pub fn container_id(&self) -> Option<String> {
        self.args
            .get(self.positional_start())
            .map(|s| s.to_string_lossy().into_owned())
    }

    pub fn has_flag(&self, names: &[&str]) -> bool {
        self.command_flags().iter().any(|a| {
            let a = a.to_string_lossy();
            names.contains(&flag_name(&a))
        })
    }

    /// The namespace tether files the container under: the last component of runc's
    /// `--root` (`/run/containerd/runc/<namespace>`, `/run/docker/runtime-runc/moby`).
    pub fn namespace(&self) -> String {
        self.global_value("--root")
            .and_then(|r| {
                Path::new(&r)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .filter(|n| tether_bpf::pins::check_name("namespace", n).is_ok())
            .unwrap_or_else(|| "runc".to_string())
    }
}

fn value_of(list: &[OsString], name: &str) -> Option<OsString> {
    let mut it = list.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if let Some(v) = s.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(OsString::from(v));
        }
        if s == name {
            return it.next().cloned();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn parses_containerd_shim_command_lines() {
        let a = RuncArgs::parse(&argv(
            "--root /run/containerd/runc/k8s.io --log /b/log.json --log-format json --systemd-cgroup \
             create --bundle /b --pid-file /b/init.pid --console-socket /tmp/c.sock web-1",
        ));
        assert_eq!(a.command.as_deref(), Some("create"));
        assert_eq!(a.container_id().as_deref(), Some("web-1"));
        assert_eq!(a.arg_value(&["--bundle", "-b"]), Some("/b".into()));
        assert_eq!(a.global_value("--log"), Some("/b/log.json".into()));
        assert_eq!(a.namespace(), "k8s.io");
        assert_eq!(a.global.len(), 7);

        let a = RuncArgs::parse(&argv(
            "--root=/run/docker/runtime-runc/moby delete --force abc",
        ));
        assert_eq!(a.command.as_deref(), Some("delete"));
        assert_eq!(a.container_id().as_deref(), Some("abc"));
        assert!(a.has_flag(&["--force", "-f"]));
        assert_eq!(a.namespace(), "moby");

        let a = RuncArgs::parse(&argv("run -d -b /x --keep c1"));
        assert_eq!(a.container_id().as_deref(), Some("c1"));
        assert!(a.has_flag(&["--detach", "-d"]) && a.has_flag(&["--keep"]));
        assert_eq!(a.namespace(), "runc");

        let a = RuncArgs::parse(&argv("--version"));
        assert_eq!(a.command, None);
    }
}
