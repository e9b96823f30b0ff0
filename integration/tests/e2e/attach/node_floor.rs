//! The node's policy is a floor: with a deny rule in the node's config, a container's
//! annotations may add rules and tighten, and every annotation that would lower the node's
//! setting (switch the policy or accounting off, fail open, audit less, leave out
//! interfaces) is refused at create, naming the key and the node's setting, with nothing
//! left behind. Keys the node does not allow are refused the same way.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use tether_integration::{Output, TestEnv};

use super::{denied, reached, refused_at_create, tether};

/// Replaces the fixture's `[attach]` section (last in the file, if any) with `attach`,
/// keeping its attach deadline; the original comes back on drop.
pub(super) struct NodeConfig {
    path: PathBuf,
    original: String,
}

impl NodeConfig {
    pub(super) fn set(env: &TestEnv, attach: &str) -> Result<Self> {
        let path = env.containerd().tether_config();
        let original = std::fs::read_to_string(&path)?;
        let kept = original.split("[attach]").collect::<Vec<_>>();
        let deadline = kept
            .get(1)
            .and_then(|a| a.lines().find(|l| l.starts_with("deadline_ms")))
            .map(|l| format!("{l}\n"))
            .unwrap_or_default();
        let text = format!("{}[attach]\n{deadline}{attach}", kept[0]);
        std::fs::write(&path, text)?;
        Ok(NodeConfig { path, original })
    }
}

impl Drop for NodeConfig {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.original);
    }
}

/// Runs `nc` to the node-denied address in a container with `annotations`.
fn probe(env: &mut TestEnv, name: &str, annotations: &[&str]) -> Result<Output> {
    let id = env.id(name);
    let mut run = env.run(&id).rm();
    for a in annotations {
        run = run.flag("--annotation").flag(*a);
    }
    env.ctr
        .run_container(&run.command(["/bin/nc", "-w", "3", "127.0.0.2", "9"]))
}

#[test]
fn annotations_cannot_lower_the_nodes_policy() -> Result<()> {
    tether("node_floor", |env| {
        // Control: without a node rule the probe reaches the address (nothing listens on
        // port 9: "Connection refused"), so a refused or denied probe below is tether's.
        let out = probe(env, "control", &["tether.io/programs=accounting"])?;
        ensure!(reached(&out), "the probe does not reach 127.0.0.2: {out}");

        let _node = NodeConfig::set(env, "egress_deny = [\"127.0.0.2/32\"]\n")?;
        let out = probe(env, "floor", &[])?;
        ensure!(denied(&out), "the node's rule is not enforced: {out}");

        // Each way down, refused before anything is created.
        for (ann, node) in [
            ("tether.io/programs=none", "[attach] programs"),
            ("tether.io/programs=accounting", "[attach] egress_deny"),
            ("tether.io/failure-policy=open", "[attach] egress_deny"),
            ("tether.io/audit=off", "[attach] audit"),
            ("tether.io/interfaces=none", "[attach] interfaces"),
            ("tether.io/audit-rate=1", "[attach] annotations allows"),
        ] {
            let id = env.id("lower");
            let out = env.ctr.run_container(
                &env.run(&id).rm().flag("--annotation").flag(ann).command([
                    "/bin/nc",
                    "-w",
                    "3",
                    "127.0.0.2",
                    "9",
                ]),
            )?;
            let key = ann.split('=').next().unwrap_or(ann);
            ensure!(!reached(&out), "{ann}: ran: {out}");
            refused_at_create(env, &id, &out, &[key, node]).context(ann)?;
        }

        // Tightening is the container's to do: its own rule adds to the node's.
        let out = probe(
            env,
            "tighter",
            &[
                "tether.io/egress-deny=127.0.0.3/32",
                "tether.io/audit=connections",
            ],
        )?;
        ensure!(denied(&out), "the node's rule, with the container's: {out}");
        Ok(())
    })
}
