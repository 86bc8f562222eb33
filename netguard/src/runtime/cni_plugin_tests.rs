use std::cell::RefCell;
use std::collections::HashMap;

use super::*;

/// Records what the protocol asked of netguard's side; fails when told to.
#[derive(Default)]
struct Fake {
    calls: RefCell<Vec<String>>,
    fail: bool,
    broken: Option<String>,
}

impl Recorder for Fake {
    type Error = String;
    fn add(&self, att: &AttachmentRef, prev: &PrevResult) -> Result<String, String> {
        let mac = prev
            .sandbox_interface(&att.ifname)
            .and_then(|i| i.mac.clone());
        self.calls.borrow_mut().push(format!(
            "add {att} {:?} {mac:?} {:?}",
            att.netns, att.pod_uid
        ));
        if self.fail {
            return Err("no agent and the ledger is busy".into());
        }
        Ok("guarding eth0".into())
    }
    fn del(&self, att: &AttachmentRef) -> Result<(), String> {
        self.calls
            .borrow_mut()
            .push(format!("del {att} {:?}", att.netns));
        if self.fail {
            return Err("disk full".into());
        }
        Ok(())
    }
    fn check(&self, att: &AttachmentRef, _: &PrevResult) -> Result<Option<String>, String> {
        self.calls.borrow_mut().push(format!("check {att}"));
        if self.fail {
            return Err("no agent".into());
        }
        Ok(self.broken.clone())
    }
    fn gc(&self, network: &str, valid: &[GcAttachment]) -> Result<usize, String> {
        self.calls
            .borrow_mut()
            .push(format!("gc {network} {}", valid.len()));
        Ok(0)
    }
}

fn inv(command: &str, extra: &[(&str, &str)]) -> Invocation {
    let mut env: HashMap<String, String> = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/netns-1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Invocation::from_env(|k| env.get(k).cloned()).unwrap()
}

const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:aa:aa:aa:aa:01"},{"name":"veth1","mac":"aa:aa:aa:aa:aa:02"},{"name":"eth0","mac":"aa:aa:aa:aa:aa:03","sandbox":"/run/netns/netns-1"}],"ips":[{"address":"198.18.20.2/24","gateway":"198.18.20.1","interface":2}],"dns":{}}"#;

fn conf(version: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"cniVersion":"{version}","name":"net1","type":"netguard","socket":"/tmp/x.sock"{extra}}}"#
    )
    .into_bytes()
}

fn error_of(out: &Outcome) -> ErrorReply {
    assert_eq!(out.code, 1, "{}", String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).expect("a CNI error object")
}

#[test]
fn add_prints_the_previous_result_byte_for_byte_in_every_version() {
    for version in SUPPORTED_VERSIONS {
        let fake = Fake::default();
        let stdin = conf(version, &format!(r#","prevResult":{PREV}"#));
        let out = handle(&inv("ADD", &[]), &stdin, &fake);
        assert_eq!(out.code, 0);
        assert_eq!(String::from_utf8(out.stdout).unwrap(), PREV);
        assert_eq!(
            fake.calls.borrow().as_slice(),
            [r#"add net1/c0ffee/eth0 Some("/run/netns/netns-1") Some("aa:aa:aa:aa:aa:03") None"#]
        );
    }
}

#[test]
fn add_fails_open_when_netguard_cannot_record() {
    let fake = Fake {
        fail: true,
        ..Fake::default()
    };
    let out = handle(
        &inv("ADD", &[]),
        &conf("1.1.0", &format!(r#","prevResult":{PREV}"#)),
        &fake,
    );
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout, PREV.as_bytes());
}

#[test]
fn add_reads_the_pod_uid_from_cni_args() {
    let fake = Fake::default();
    let args = [(
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_UID=5f1c",
    )];
    handle(
        &inv("ADD", &args),
        &conf("1.0.0", &format!(r#","prevResult":{PREV}"#)),
        &fake,
    );
    assert!(
        fake.calls.borrow()[0].ends_with(r#"Some("5f1c")"#),
        "{:?}",
        fake.calls
    );
}

#[test]
fn add_without_a_previous_result_is_a_config_error() {
    let err = error_of(&handle(
        &inv("ADD", &[]),
        &conf("1.0.0", ""),
        &Fake::default(),
    ));
    assert_eq!((err.code, err.cni_version.as_str()), (7, "1.0.0"));
    assert!(err.msg.contains("chained plugin"), "{}", err.msg);
}

#[test]
fn an_unsupported_version_is_error_1() {
    let err = error_of(&handle(
        &inv("ADD", &[]),
        &conf("0.3.1", ""),
        &Fake::default(),
    ));
    assert_eq!(err.code, 1);
    assert!(err.msg.contains("0.3.1"), "{}", err.msg);
    assert_eq!(err.cni_version, "1.1.0");
}

#[test]
fn garbage_on_stdin_is_error_6_and_missing_variables_error_4() {
    assert_eq!(
        error_of(&handle(&inv("DEL", &[]), b"{nope", &Fake::default())).code,
        6
    );
    let no_ifname = Invocation {
        ifname: None,
        ..inv("DEL", &[])
    };
    let err = error_of(&handle(&no_ifname, &conf("1.0.0", ""), &Fake::default()));
    assert_eq!(err.code, 4);
    assert!(err.msg.contains("CNI_IFNAME"), "{}", err.msg);
    let bad = Invocation::from_env(|k| (k == "CNI_COMMAND").then(|| "ATTACH".to_string()));
    assert!(matches!(bad, Err(CniError::Env(m)) if m.contains("ATTACH")));
}

#[test]
fn del_is_quiet_and_succeeds_with_the_netns_gone_and_netguard_failing() {
    let fake = Fake {
        fail: true,
        ..Fake::default()
    };
    let gone = Invocation {
        netns: None,
        ..inv("DEL", &[])
    };
    let out = handle(&gone, &conf("0.4.0", ""), &fake);
    assert_eq!(
        out,
        Outcome {
            stdout: Vec::new(),
            code: 0
        }
    );
    assert_eq!(
        fake.calls.borrow().as_slice(),
        ["del net1/c0ffee/eth0 None"]
    );
}

#[test]
fn check_fails_only_when_netguard_sees_it_broken() {
    let stdin = conf("1.0.0", &format!(r#","prevResult":{PREV}"#));
    let ok = handle(&inv("CHECK", &[]), &stdin, &Fake::default());
    assert_eq!(ok.code, 0);
    let unsure = Fake {
        fail: true,
        ..Fake::default()
    };
    assert_eq!(handle(&inv("CHECK", &[]), &stdin, &unsure).code, 0);
    let broken = Fake {
        broken: Some("eth0 is missing".into()),
        ..Fake::default()
    };
    let err = error_of(&handle(&inv("CHECK", &[]), &stdin, &broken));
    assert_eq!(err.code, 100);
    assert_eq!(err.msg, "net1/c0ffee/eth0: eth0 is missing");
}

#[test]
fn version_lists_what_netguard_speaks() {
    let out = handle(
        &inv("VERSION", &[]),
        br#"{"cniVersion":"1.0.0"}"#,
        &Fake::default(),
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    );
    let out = handle(&inv("VERSION", &[]), b"", &Fake::default());
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["cniVersion"], "1.1.0");
}

#[test]
fn status_and_gc_are_1_1_commands() {
    let fake = Fake::default();
    let status = Invocation {
        container_id: None,
        netns: None,
        ifname: None,
        ..inv("STATUS", &[])
    };
    assert_eq!(handle(&status, &conf("1.1.0", ""), &fake).code, 0);
    assert_eq!(
        error_of(&handle(&status, &conf("1.0.0", ""), &fake)).code,
        1
    );
    let gc = Invocation {
        command: Command::Gc,
        ..status
    };
    let valid = r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"net1"}]"#;
    let out = handle(&gc, &conf("1.1.0", valid), &fake);
    assert_eq!(
        out,
        Outcome {
            stdout: Vec::new(),
            code: 0
        }
    );
    assert_eq!(fake.calls.borrow().as_slice(), ["gc net1 2"]);
}
