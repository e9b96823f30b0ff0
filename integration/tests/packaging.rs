//! packaging/install.sh installs into a host root (as the Kubernetes installer does) what the
//! README and the systemd unit expect (binaries, unit, config, the containerd handler, the
//! Podman runtime), and leaves an existing config alone.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};

#[test]
fn install_script_installs_binaries_unit_config_containerd_handler_and_podman_runtime() -> Result<()>
{
    let bin_dir = tether_integration::containerd::tether_shim_binary()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("no build directory"))?;
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("etc/containerd"))?;
    std::fs::create_dir_all(root.path().join("etc/containers"))?;
    std::fs::write(
        root.path().join("etc/containerd/config.toml"),
        "version = 2\n[grpc]\n  address = \"/run/containerd/containerd.sock\"\n",
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh");
    let run = || {
        Command::new("bash")
            .arg(&script)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--host-root")
            .arg(root.path())
            .output()
    };
    let out = run()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for b in [
        "containerd-shim-tether-v1",
        "tether-runc",
        "tetherd",
        "tetherctl",
    ] {
        let p = root.path().join("usr/local/bin").join(b);
        let mode = std::fs::metadata(&p)?.permissions().mode();
        ensure!(mode & 0o777 == 0o755, "{}: mode {mode:o}", p.display());
    }
    let unit = std::fs::read_to_string(root.path().join("etc/systemd/system/tetherd.service"))?;
    ensure!(unit.contains("ExecStart=/usr/local/bin/tetherd"), "{unit}");
    ensure!(unit.contains("CapabilityBoundingSet=CAP_BPF"), "{unit}");
    let ctd = std::fs::read_to_string(root.path().join("etc/containerd/config.toml"))?;
    ensure!(
        ctd.contains("runtime_type = \"io.containerd.tether.v1\""),
        "{ctd}"
    );
    ensure!(ctd.matches("version = ").count() == 1, "{ctd}");
    // What it appends is what the CRI tests' nodes run (tests/e2e/cri).
    ensure!(
        ctd.contains(&tether_integration::cri::installed_snippet(2)),
        "{ctd}"
    );
    let podman = std::fs::read_to_string(
        root.path()
            .join("etc/containers/containers.conf.d/tether.conf"),
    )?;
    ensure!(
        podman.contains("tether = [\"/usr/local/bin/tether-runc\"]"),
        "{podman}"
    );

    // A containerd 2.x config (version 3) gets the 2.x snippet.
    let root3 = tempfile::tempdir()?;
    std::fs::create_dir_all(root3.path().join("etc/containerd"))?;
    std::fs::write(
        root3.path().join("etc/containerd/config.toml"),
        "version = 3\n[grpc]\n  address = \"/run/containerd/containerd.sock\"\n",
    )?;
    let out = Command::new("bash")
        .arg(&script)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--host-root")
        .arg(root3.path())
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctd3 = std::fs::read_to_string(root3.path().join("etc/containerd/config.toml"))?;
    ensure!(
        ctd3.contains(&tether_integration::cri::installed_snippet(3))
            && ctd3.contains("io.containerd.cri.v1.runtime")
            && ctd3.matches("version = ").count() == 1,
        "{ctd3}"
    );

    // A second run keeps the operator's config and adds the handler only once.
    std::fs::write(
        root.path().join("etc/tether/config.toml"),
        "[attach]\nenabled = false\n",
    )?;
    let out = run()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = std::fs::read_to_string(root.path().join("etc/tether/config.toml"))?;
    ensure!(cfg.contains("enabled = false"), "{cfg}");
    let ctd = std::fs::read_to_string(root.path().join("etc/containerd/config.toml"))?;
    ensure!(
        ctd.matches("runtime_type = \"io.containerd.tether.v1\"")
            .count()
            == 1,
        "{ctd}"
    );
    Ok(())
}

#[test]
fn debian_package_holds_binaries_unit_and_config() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let build = Command::new("bash")
        .arg("scripts/build-release.sh")
        .current_dir(&root)
        .status()?;
    ensure!(build.success(), "scripts/build-release.sh");
    // The shim runs once per container: it is linked statically (see the script).
    for bin in ["containerd-shim-tether-v1", "tether-runc"] {
        let ldd = Command::new("ldd")
            .arg(root.join("target/release").join(bin))
            .output()?;
        let text = String::from_utf8_lossy(&ldd.stdout).into_owned()
            + &String::from_utf8_lossy(&ldd.stderr);
        ensure!(
            text.contains("statically linked"),
            "{bin} is not static: {text}"
        );
    }
    let out = Command::new("cargo")
        .args(["deb", "-p", "tether-shim", "--no-build", "--output"])
        .arg(root.join("target/debian/tether-test.deb"))
        .current_dir(&root)
        .output()?;
    ensure!(
        out.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = Command::new("dpkg-deb")
        .arg("-c")
        .arg(root.join("target/debian/tether-test.deb"))
        .output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "./usr/bin/containerd-shim-tether-v1",
        "./usr/bin/tether-runc",
        "./usr/bin/tetherd",
        "./usr/bin/tetherctl",
        "./lib/systemd/system/tetherd.service",
        "./etc/tether/config.toml",
    ] {
        ensure!(
            list.contains(want),
            "{want} missing from the package:\n{list}"
        );
    }
    let conf = Command::new("dpkg-deb")
        .arg("-I")
        .arg(root.join("target/debian/tether-test.deb"))
        .arg("conffiles")
        .output()?;
    ensure!(
        String::from_utf8_lossy(&conf.stdout).contains("/etc/tether/config.toml"),
        "the config is not a conffile"
    );
    Ok(())
}
