//! Field report 001's topology made by Debian's own CNI plugins, with netguard chained: pod p3's
//! eth0 is a `macvlan` over the host vlan eth1.5, pod p4's eth0 is a vlan on eth2 made by the
//! `vlan` plugin inside the pod. No `learn`: the chained ADD is all netguard is told. A driver
//! reload removes all of it; the agent brings both back with the same MAC, address and route.
//! Then an operator deletes p3's eth0 inside its netns: released, never re-created, and
//! `status` names who deleted it where the backend knows.

use std::path::PathBuf;

use netguard_tests::cni::{Attachment, CniRunner};
use serde_json::{json, Value};

use crate::agent::{has_address, has_default_route, link, until, Agent, Outcome};
use crate::scenarios::ip;

/// Where the initramfs carries Debian's plugins (static binaries); netguard is linked in.
const CNI_DIR: &str = "/usr/lib/cni";

struct ChainedPod {
    netns: &'static str,
    addr: &'static str,
    gateway: &'static str,
    /// The first plugin of the chain (netguard follows it).
    plugin: Value,
}

impl ChainedPod {
    fn conflist(&self, agent: &Agent) -> Value {
        let mut plugin = self.plugin.clone();
        plugin["ipam"] = json!({
            "type": "static",
            "addresses": [{ "address": format!("{}/24", self.addr), "gateway": self.gateway }],
            "routes": [{ "dst": "0.0.0.0/0" }]
        });
        json!({
            "cniVersion": "1.0.0",
            "name": format!("vm-{}", self.netns),
            "plugins": [
                plugin,
                { "type": "netguard", "socket": agent.socket, "stateDir": agent.state_dir }
            ]
        })
    }

    fn attachment(&self) -> Attachment {
        Attachment {
            container_id: format!("pod-{}", self.netns),
            netns: Some(PathBuf::from(format!("/run/netns/{}", self.netns))),
            ifname: "eth0".into(),
            args: Some(format!("IgnoreUnknown=1;K8S_POD_NAME={}", self.netns)),
        }
    }

    /// Its eth0 with `mac`, its address and its default route.
    fn is_back(&self, mac: &str) -> bool {
        link(Some(self.netns), "eth0")
            .is_some_and(|l| l["address"] == mac && has_address(&l, self.addr, 24))
            && has_default_route(self.netns, "eth0", self.gateway)
    }
}

/// Runs the chain ADD for `pod`; the MAC its eth0 got.
fn add(runner: &CniRunner, agent: &Agent, pod: &ChainedPod) -> Result<String, String> {
    ip(&["netns", "add", pod.netns])?;
    let result = runner
        .add(&pod.conflist(agent), &pod.attachment())
        .map_err(|run| format!("CNI ADD for {}: {run:?}", pod.netns))?;
    let eth0 = result["interfaces"]
        .as_array()
        .and_then(|i| {
            i.iter()
                .find(|i| i["name"] == "eth0" && i["sandbox"].is_string())
        })
        .ok_or_else(|| format!("the result names no eth0 in the pod: {result}"))?;
    let mac = eth0["mac"].as_str().ok_or("eth0 has no MAC")?.to_string();
    if !pod.is_back(&mac) {
        return Err(format!(
            "{}'s eth0 is not as the result says: {result}",
            pod.netns
        ));
    }
    Ok(mac)
}

pub async fn chained_driver_reload(agent: &Agent) -> Outcome {
    let _ = std::fs::remove_file(format!("{CNI_DIR}/netguard"));
    std::os::unix::fs::symlink("/bin/netguard", format!("{CNI_DIR}/netguard"))
        .map_err(|e| format!("link netguard into {CNI_DIR}: {e}"))?;
    for step in [
        &["link", "set", "eth1", "up"][..],
        &[
            "link", "add", "link", "eth1", "name", "eth1.5", "type", "vlan", "id", "5",
        ],
        // The host's address on the vlan: read only when a host-side link is guarded.
        &["addr", "add", "198.18.7.1/24", "dev", "eth1.5"],
        &["link", "set", "eth1.5", "up"],
        &["link", "set", "eth2", "up"],
    ] {
        ip(step)?;
    }
    let macvlan = ChainedPod {
        netns: "p3",
        addr: "198.18.5.2",
        gateway: "198.18.5.1",
        plugin: json!({ "type": "macvlan", "master": "eth1.5", "mode": "bridge" }),
    };
    let vlan = ChainedPod {
        netns: "p4",
        addr: "198.18.6.2",
        gateway: "198.18.6.1",
        plugin: json!({ "type": "vlan", "master": "eth2", "vlanId": 6 }),
    };
    let runner = CniRunner::new(vec![PathBuf::from(CNI_DIR)]);
    let macs = [add(&runner, agent, &macvlan)?, add(&runner, agent, &vlan)?];

    let status = agent.status()?;
    let guarded = |name: &str, netns: &str, kind: &str| {
        status["rows"].as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["name"] == name && r["kind"] == kind && r["netns"].as_str() == Some(netns)
            })
        })
    };
    for (name, netns, kind) in [
        ("eth0", "/run/netns/p3", "macvlan"),
        ("eth1.5", "host", "vlan"),
        ("eth0", "/run/netns/p4", "vlan"),
    ] {
        if !guarded(name, netns, kind) {
            return Err(format!(
                "ADD did not guard {kind} {name} in {netns}: {status}"
            ));
        }
    }

    crate::agent::reload_e1000()?;
    for (pod, mac) in [(&macvlan, &macs[0]), (&vlan, &macs[1])] {
        let what = format!(
            "{}'s eth0 back with MAC {mac}, address, default route",
            pod.netns
        );
        until(&what, || pod.is_back(mac)).await?;
    }
    until(
        "the host vlan eth1.5 back with its address 198.18.7.1/24",
        || link(None, "eth1.5").is_some_and(|l| has_address(&l, "198.18.7.1", 24)),
    )
    .await?;
    deleted_on_purpose(agent, &macvlan).await
}

/// Scenario (e): `ip link del eth0` inside the pod -> released, not re-created.
async fn deleted_on_purpose(agent: &Agent, pod: &ChainedPod) -> Outcome {
    ip(&["-n", pod.netns, "link", "del", "eth0"])?;
    let netns = format!("/run/netns/{}", pod.netns);
    let row = || -> Result<Option<Value>, String> {
        Ok(agent.status()?["rows"].as_array().and_then(|rows| {
            rows.iter()
                .find(|r| r["name"] == "eth0" && r["netns"].as_str() == Some(netns.as_str()))
                .cloned()
        }))
    };
    until(&format!("{}'s eth0 released", pod.netns), || {
        row()
            .ok()
            .flatten()
            .is_some_and(|r| r["state"] == "released")
    })
    .await?;
    // Past the agent's wait for a cause, over several passes.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    if link(Some(pod.netns), "eth0").is_some() {
        return Err(format!(
            "{}'s eth0 was re-created after its deletion",
            pod.netns
        ));
    }
    let row = row()?.ok_or("the released eth0 left status")?;
    let reason = row["reason"].as_str().unwrap_or_default();
    // The eBPF backends see the deleting task; the netlink one says it cannot.
    let named = agent.backend == netguard::trace::BackendKind::Netlink
        || reason.starts_with("deleted by ip[");
    if row["state"] != "released" || !reason.starts_with("deleted by ") || !named {
        return Err(format!("status after the delete: {row}"));
    }
    Ok(())
}
