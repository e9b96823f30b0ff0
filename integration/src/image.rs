//! An OCI image made from a local rootfs, imported into a private containerd.
//!
//! No registry is reachable (and none may be contacted), so test images are written as an OCI
//! image layout archive (`oci-layout`, `index.json`, `blobs/sha256/...`: one uncompressed
//! layer, a config, a manifest) and loaded with `ctr images import`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::json;

use crate::ctr::Ctr;
use crate::process;

/// The name of the busybox test image. `tether.test` is not a registry anyone serves.
pub const BUSYBOX_IMAGE: &str = "tether.test/busybox:latest";

/// Deadline of the `tar`, `sha256sum` and `ctr images import` steps.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// A content-addressed blob: `sha256:<hex>` and its size.
struct Blob {
    digest: String,
    size: u64,
}

/// The name of the pause image a CRI sandbox runs (the busybox rootfs, sleeping).
pub const PAUSE_IMAGE: &str = "tether.test/pause:1";

/// What a pause container runs: nothing but waiting for its SIGKILL.
pub const PAUSE_CMD: [&str; 2] = ["/bin/sleep", "2147483647"];

/// Writes an OCI image layout archive of `rootfs`, named `name`, whose command is `cmd`,
/// to `archive`.
///
/// `work` is a scratch directory (created if missing).
pub fn write_oci_archive(
    rootfs: &Path,
    name: &str,
    cmd: &[&str],
    work: &Path,
    archive: &Path,
) -> Result<()> {
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;

    // The layer: a plain tar of the rootfs, owned by root.
    let layer_tar = work.join("layer.tar");
    process::run(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(rootfs)
            .arg("-cf")
            .arg(&layer_tar)
            .arg("."),
        None,
        STEP_TIMEOUT,
    )?
    .ok()
    .context("tar of the rootfs layer")?;
    let layer = add_blob(&blobs, &layer_tar)?;

    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
    });
    let config = add_json_blob(&blobs, work, "config.json", &config)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.digest,
            "size": config.size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer.digest,
            "size": layer.size,
        }],
    });
    let manifest = add_json_blob(&blobs, work, "manifest.json", &manifest)?;

    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest,
            "size": manifest.size,
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                // What `ctr images import` names the image after.
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    write_json(&layout.join("index.json"), &index)?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .context("writing oci-layout")?;

    process::run(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(archive)
            .arg("."),
        None,
        STEP_TIMEOUT,
    )?
    .ok()
    .context("tar of the OCI layout")?;
    Ok(())
}

/// Builds the archive of `rootfs` (command `/bin/sh`) in `work` and imports it with
/// `ctr images import`.
pub fn import(ctr: &Ctr, rootfs: &Path, name: &str, work: &Path) -> Result<()> {
    import_with_cmd(ctr, rootfs, name, &["/bin/sh"], work)
}

/// [`import`] of an image whose command is `cmd`.
pub fn import_with_cmd(
    ctr: &Ctr,
    rootfs: &Path,
    name: &str,
    cmd: &[&str],
    work: &Path,
) -> Result<()> {
    let archive: PathBuf = work.join("image.tar");
    write_oci_archive(rootfs, name, cmd, work, &archive)?;
    let out = ctr.run_with(
        ["images".as_ref(), "import".as_ref(), archive.as_os_str()],
        None,
        STEP_TIMEOUT,
    )?;
    out.ok()
        .with_context(|| format!("ctr images import {}", archive.display()))?;
    Ok(())
}

/// The OCI architecture name of this machine.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let bytes = serde_json::to_vec(value).context("serializing JSON")?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn add_json_blob(blobs: &Path, work: &Path, name: &str, value: &serde_json::Value) -> Result<Blob> {
    let path = work.join(name);
    write_json(&path, value)?;
    add_blob(blobs, &path)
}

/// Moves `file` into `blobs` under its sha256.
fn add_blob(blobs: &Path, file: &Path) -> Result<Blob> {
    let digest = sha256_hex(file)?;
    let size = fs::metadata(file)
        .with_context(|| format!("stat {}", file.display()))?
        .len();
    let dest = blobs.join(&digest);
    fs::rename(file, &dest)
        .with_context(|| format!("moving {} to {}", file.display(), dest.display()))?;
    Ok(Blob {
        digest: format!("sha256:{digest}"),
        size,
    })
}

/// sha256 of `file` in hex, by coreutils' `sha256sum` (no hashing crate in the workspace).
fn sha256_hex(file: &Path) -> Result<String> {
    let out = process::run(Command::new("sha256sum").arg(file), None, STEP_TIMEOUT)?
        .ok()
        .with_context(|| format!("sha256sum {}", file.display()))?;
    let hex = out
        .stdout
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("empty sha256sum output"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(anyhow!("unexpected sha256sum output {:?}", out.stdout));
    }
    Ok(hex.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_content_addressed() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::write(rootfs.join("bin/hello"), "hi").unwrap();
        let work = tmp.path().join("work");
        let archive = tmp.path().join("img.tar");
        write_oci_archive(&rootfs, "tether.test/x:1", &["/bin/x"], &work, &archive).unwrap();

        let layout = work.join("layout");
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "tether.test/x:1"
        );
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "1");
        let manifest: serde_json::Value = serde_json::from_slice(
            &fs::read(
                layout
                    .join("blobs/sha256")
                    .join(&m["digest"].as_str().unwrap()[7..]),
            )
            .unwrap(),
        )
        .unwrap();
        let config: serde_json::Value = serde_json::from_slice(
            &fs::read(
                layout
                    .join("blobs/sha256")
                    .join(&manifest["config"]["digest"].as_str().unwrap()[7..]),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(config["config"]["Cmd"], json!(["/bin/x"]));
        let digest = m["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let blob = layout.join("blobs/sha256").join(digest);
        assert_eq!(sha256_hex(&blob).unwrap(), digest);
        assert_eq!(
            fs::metadata(&blob).unwrap().len(),
            m["size"].as_u64().unwrap()
        );
        assert!(archive.is_file());
    }
}
