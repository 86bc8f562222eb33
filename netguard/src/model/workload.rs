//! Who a guarded link belongs to: a workload that outlives its netns. Runtimes give every
//! start of a container a new netns at a new path (podman `/run/netns/netns-<uuid>`), so a
//! netns path alone cannot say that a link belongs to the same container as before.

use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a guarded link belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Workload {
    /// One interface of a container on a CNI network (recorded at CNI ADD).
    CniAttachment {
        network: String,
        container_id: String,
        ifname: String,
        /// `K8S_POD_UID`: a new sandbox of the same pod is the same workload.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod_uid: Option<String>,
    },
    /// An OCI container, known from its hooks.
    Container {
        runtime: String,
        id: String,
        /// Its bundle, once a hook told it: gone when the container is removed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bundle: Option<PathBuf>,
    },
    /// A plain netns path (`learn --netns`, `ip netns add`).
    Netns { path: PathBuf },
}

impl Workload {
    /// Whether `other` is the same workload: the same pod's interface on the same network
    /// when both carry a pod UID (whatever the sandbox's container ID), else equal.
    pub fn same(&self, other: &Workload) -> bool {
        match (self, other) {
            (
                Workload::CniAttachment {
                    network: n1,
                    ifname: i1,
                    pod_uid: Some(p1),
                    ..
                },
                Workload::CniAttachment {
                    network: n2,
                    ifname: i2,
                    pod_uid: Some(p2),
                    ..
                },
            ) => (n1, i1, p1) == (n2, i2, p2),
            (Workload::Container { id: a, .. }, Workload::Container { id: b, .. }) => a == b,
            _ => self == other,
        }
    }

    /// Whether this is the CNI attachment (network, container ID, ifname), as DEL and GC
    /// name it.
    pub fn is_attachment(&self, network: &str, container_id: &str, ifname: &str) -> bool {
        matches!(self, Workload::CniAttachment { network: n, container_id: c, ifname: i, .. }
            if (n.as_str(), c.as_str(), i.as_str()) == (network, container_id, ifname))
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::CniAttachment {
                network,
                container_id,
                ifname,
                pod_uid,
            } => {
                write!(f, "cni {network}/{}/{ifname}", short(container_id))?;
                match pod_uid {
                    Some(uid) => write!(f, " (pod {uid})"),
                    None => Ok(()),
                }
            }
            Workload::Container { runtime, id, .. } => {
                write!(f, "{runtime} container {}", short(id))
            }
            Workload::Netns { path } => write!(f, "netns {}", path.display()),
        }
    }
}

/// Container IDs are 64 hex digits; 12 tell them apart in practice (as `podman ps` shows).
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A workload's current netns: where its links live until it starts again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation {
    pub netns: PathBuf,
    pub inode: u64,
    pub since: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(container_id: &str, pod_uid: Option<&str>) -> Workload {
        Workload::CniAttachment {
            network: "net1".into(),
            container_id: container_id.into(),
            ifname: "eth0".into(),
            pod_uid: pod_uid.map(String::from),
        }
    }

    #[test]
    fn a_new_sandbox_of_the_same_pod_is_the_same_workload() {
        assert!(att("sandbox1", Some("uid")).same(&att("sandbox2", Some("uid"))));
        assert!(!att("sandbox1", None).same(&att("sandbox2", None)));
        assert!(!att("sandbox1", Some("uid")).same(&att("sandbox1", Some("other"))));
        assert!(att("c1", None).is_attachment("net1", "c1", "eth0"));
        assert!(!att("c1", None).is_attachment("net2", "c1", "eth0"));
    }

    #[test]
    fn workloads_read_as_people_name_them() {
        let id = "f2b837f649a1fe33dc2cab1ee590084fb8291ef2fc79f91fc01a9df57f9f0b9c";
        assert_eq!(att(id, None).to_string(), "cni net1/f2b837f649a1/eth0");
        assert_eq!(
            att("k", Some("5f1c")).to_string(),
            "cni net1/k/eth0 (pod 5f1c)"
        );
        let c = Workload::Container {
            runtime: "podman".into(),
            id: id.into(),
            bundle: None,
        };
        assert_eq!(c.to_string(), "podman container f2b837f649a1");
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["kind"], "container");
        assert_eq!(serde_json::from_value::<Workload>(json).unwrap(), c);
    }
}
