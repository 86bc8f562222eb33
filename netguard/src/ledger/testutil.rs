//! Fixtures for the ledger's unit tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::Utc;

use super::*;

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("netguard-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A ledger with one NIC, a veth (container side, host side on a bridge) and a vlan +
/// macvlan pair as in field report 001.
pub fn sample_content() -> LedgerContent {
    let nic = NicIdentity {
        perm_mac: Some("52:54:00:12:34:56".parse().unwrap()),
        bus: Some("0000:00:03.0".into()),
        driver: Some("e1000".into()),
    };
    let veth = LinkSpec {
        name: "eth0".into(),
        netns: Locator::Path("/run/netns/c1".into()),
        netns_inode: Some(4026532118),
        mac: Some("02:00:00:00:00:01".parse().unwrap()),
        mtu: Some(1500),
        up: true,
        addresses: vec!["198.18.0.2/24".parse().unwrap()],
        routes: vec![RouteSpec {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("198.18.0.1".parse().unwrap()),
            onlink: false,
            metric: None,
        }],
        kind: KindSpec::Veth {
            peer: VethPeer {
                name: "vc1".into(),
                netns: Locator::Host,
                mac: Some("02:00:00:00:00:02".parse().unwrap()),
                mtu: Some(1500),
                up: true,
                master: Some("br0".into()),
            },
        },
    };
    let vlan = LinkSpec {
        name: "eth0.3".into(),
        netns: Locator::Host,
        netns_inode: None,
        mac: None,
        mtu: Some(1500),
        up: true,
        addresses: vec![],
        routes: vec![],
        kind: KindSpec::Vlan {
            parent: Parent::Nic(nic.clone()),
            id: 3,
            protocol: VlanProtocol::Dot1q,
        },
    };
    let macvlan = LinkSpec {
        name: "eth0".into(),
        netns: Locator::Path("/proc/111576/ns/net".into()),
        netns_inode: Some(4026532300),
        mac: Some("6e:92:1a:b4:fc:34".parse().unwrap()),
        mtu: None,
        up: true,
        addresses: vec!["10.161.75.155/22".parse().unwrap()],
        routes: vec![RouteSpec {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("10.161.72.1".parse().unwrap()),
            onlink: false,
            metric: None,
        }],
        kind: KindSpec::Macvlan {
            parent: Parent::Link {
                netns: Locator::Host,
                name: "eth0.3".into(),
            },
            mode: MacvlanMode::Bridge,
        },
    };
    let links = [veth, vlan, macvlan]
        .into_iter()
        .map(|spec| {
            (
                spec.key(),
                LinkRecord {
                    spec,
                    state: LinkState::Intact,
                    reason: None,
                    since: Utc::now(),
                    workload: None,
                    cannot_restore: Vec::new(),
                    history: Vec::new(),
                    cni_cache_file: None,
                },
            )
        })
        .collect();
    LedgerContent {
        journal_seq: 0,
        flights: vec![],
        containers: vec![],
        nics: vec![NicRecord {
            identity: nic,
            home_name: "eth2".into(),
            up: Some(true),
            location: None,
            state: NicState::Home,
            reason: None,
            since: Utc::now(),
            lent: None,
        }],
        links,
    }
}
