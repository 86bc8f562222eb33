//! The pods of the driver-reload scenarios: a macvlan in a pod netns over a vlan or a NIC,
//! made known to the agent by `learn` or by importing a CNI checkpoint.

use crate::agent::{has_address, has_default_route, link, Agent, Outcome};
use crate::scenarios::ip;

/// A pod's macvlan as the driver-reload scenarios set it up: `eth0` in `/run/netns/{netns}`.
pub struct Pod {
    pub netns: &'static str,
    pub mac: &'static str,
    pub addr: &'static str,
    pub gateway: &'static str,
}

/// Over vlan eth1.3, learned from the live pod netns.
pub const VLAN_POD: Pod = Pod {
    netns: "p1",
    mac: "02:00:00:00:03:02",
    addr: "198.18.3.2",
    gateway: "198.18.3.1",
};

/// Over eth2, imported from a CNI checkpoint.
pub const CNI_POD: Pod = Pod {
    netns: "p2",
    mac: "02:00:00:00:04:02",
    addr: "198.18.4.2",
    gateway: "198.18.4.1",
};

impl Pod {
    /// Creates the pod netns and its macvlan (made in init_net as `temp` over `parent`, moved
    /// in, renamed eth0) with its MAC, address /24 and default route.
    pub fn create(&self, parent: &str, temp: &str) -> Outcome {
        let ns = self.netns;
        let addr = format!("{}/24", self.addr);
        for step in [
            &["netns", "add", ns][..],
            &[
                "link", "add", "link", parent, "name", temp, "type", "macvlan", "mode", "bridge",
            ],
            &["link", "set", temp, "netns", ns],
            &[
                "-n", ns, "link", "set", temp, "name", "eth0", "address", self.mac, "up",
            ],
            &["-n", ns, "addr", "add", &addr, "dev", "eth0"],
            &["-n", ns, "route", "add", "default", "via", self.gateway],
        ] {
            ip(step)?;
        }
        Ok(())
    }

    /// Its macvlan is there with its MAC, address and default route.
    pub fn is_back(&self) -> bool {
        link(Some(self.netns), "eth0")
            .is_some_and(|l| l["address"] == self.mac && has_address(&l, self.addr, 24))
            && has_default_route(self.netns, "eth0", self.gateway)
    }

    pub fn inode(&self) -> Option<u64> {
        netguard::netns::inode_of(std::path::Path::new(&format!("/run/netns/{}", self.netns))).ok()
    }
}

/// vlan eth1.3 (up) with [`VLAN_POD`]'s macvlan over it, learned by the agent.
pub fn guard_vlan_pod(agent: &Agent) -> Outcome {
    for step in [
        &["link", "set", "eth1", "up"][..],
        &[
            "link", "add", "link", "eth1", "name", "eth1.3", "type", "vlan", "id", "3",
        ],
        &["link", "set", "eth1.3", "up"],
    ] {
        ip(step)?;
    }
    VLAN_POD.create("eth1.3", "mvp1")?;
    let learned = agent.netguard(&["learn", "--netns", "/run/netns/p1"])?;
    if !learned.contains("eth0 in /run/netns/p1") {
        return Err(format!("learn said: {learned}"));
    }
    Ok(())
}

/// [`CNI_POD`]'s macvlan over eth2 (up), made known to the agent by importing the checkpoint
/// format of field report 001.
pub fn guard_cni_pod(agent: &Agent) -> Outcome {
    ip(&["link", "set", "eth2", "up"])?;
    CNI_POD.create("eth2", "mvp2")?;
    let checkpoint = serde_json::json!({
        "netns": "/run/netns/p2", "podname": "pod-p2", "sandbox": "p2sandbox", "ifname": "eth0",
        "result": {
            "interfaces": [{ "name": "eth0", "mac": CNI_POD.mac, "sandbox": "/run/netns/p2" }],
            "ips": [{ "version": "4", "interface": 0, "address": format!("{}/24", CNI_POD.addr), "gateway": CNI_POD.gateway }],
            "routes": [{ "dst": "0.0.0.0/0", "gw": CNI_POD.gateway }],
            "dns": {}
        }
    });
    std::fs::write("/tmp/checkpoint-p2", checkpoint.to_string()).map_err(|e| e.to_string())?;
    agent.netguard(&["import-cni", "/tmp/checkpoint-p2"])?;
    Ok(())
}
