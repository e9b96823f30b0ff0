//! The process spec an exec runs with: the one containerd sent, checked, with its
//! `terminal` taken from the request.
//!
//! containerd's client copies an exec's process spec from the container's and says whether
//! the exec gets a terminal in the request (`ExecProcessRequest.terminal`, from its IO
//! creator), so the two can disagree: an exec with a terminal in a container without one
//! carries `terminal: false` in its spec. The request decides, as in the Go runc shim
//! (`spec.Terminal = r.Terminal` in pkg/process/init.go), because the shim hands runc a
//! console socket exactly when the request asks for a terminal, and runc refuses a console
//! socket for a process spec without one (and a terminal without a console socket).

use crate::error::{Error, Result};

/// The JSON process spec to give `runc exec` for `spec` (the request's), with `terminal`
/// set to the request's and without the capabilities `withheld` (those tether took from the
/// container's own process). Everything else is kept as sent; runc checks it.
pub(super) fn exec_process_spec(
    exec_id: &str,
    spec: &[u8],
    terminal: bool,
    withheld: &[&str],
) -> Result<Vec<u8>> {
    let json = |source| Error::Json {
        context: format!("exec {exec_id} process spec"),
        source,
    };
    serde_json::from_slice::<crate::spec::Process>(spec).map_err(json)?;
    let mut process: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(spec).map_err(json)?;
    process.insert("terminal".into(), serde_json::Value::Bool(terminal));
    let mut process = serde_json::Value::Object(process);
    for cap in withheld {
        crate::spec::drop_capability(&mut process, cap);
    }
    serde_json::to_vec(&process).map_err(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal_of(spec: &[u8]) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(spec).unwrap();
        v["terminal"].clone()
    }

    #[test]
    fn the_request_decides_the_terminal() {
        let no_tty = br#"{"terminal":false,"cwd":"/","args":["sh"],"env":["A=1"]}"#;
        let out = exec_process_spec("e", no_tty, true, &[]).unwrap();
        assert_eq!(terminal_of(&out), serde_json::Value::Bool(true));

        let tty = br#"{"terminal":true,"cwd":"/","args":["sh"]}"#;
        let out = exec_process_spec("e", tty, false, &[]).unwrap();
        assert_eq!(terminal_of(&out), serde_json::Value::Bool(false));

        // Absent means false in the runtime spec; the request still decides.
        let out = exec_process_spec("e", br#"{"cwd":"/"}"#, true, &[]).unwrap();
        assert_eq!(terminal_of(&out), serde_json::Value::Bool(true));
    }

    #[test]
    fn the_rest_of_the_spec_is_kept() {
        let spec = br#"{"terminal":false,"cwd":"/w","args":["a","b"],"user":{"uid":7,"gid":8},"noNewPrivileges":true,"future":{"x":1}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&exec_process_spec("e", spec, true, &[]).unwrap()).unwrap();
        let mut want: serde_json::Value = serde_json::from_slice(spec).unwrap();
        want["terminal"] = serde_json::Value::Bool(true);
        assert_eq!(out, want);
    }

    #[test]
    fn a_bad_spec_is_refused() {
        for bad in [&b"not json"[..], b"[]", br#"{"args":["sh"]}"#, b"null"] {
            let e = exec_process_spec("e7", bad, false, &[]).unwrap_err();
            assert!(matches!(e, Error::Json { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("exec e7"), "{e}");
        }
    }

    #[test]
    fn withheld_capabilities_are_not_given_to_an_exec() {
        let spec = br#"{"cwd":"/","capabilities":{"bounding":["CAP_NET_RAW","CAP_KILL"],"effective":["CAP_NET_RAW"]}}"#;
        let out: serde_json::Value = serde_json::from_slice(
            &exec_process_spec("e", spec, false, &[crate::spec::CAP_NET_RAW]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            out["capabilities"],
            serde_json::json!({"bounding": ["CAP_KILL"], "effective": []})
        );
    }
}
