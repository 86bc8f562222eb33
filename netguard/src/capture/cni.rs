//! CNI results as runtimes leave them on disk, parsed into what a pod's interface should be
//! (MAC, addresses, routes) and, when the file carries it, how it was made (plugin config).
//!
//! Two formats:
//! - the per-sandbox checkpoint of field report 001: `{"netns", "podname", "sandbox", "ifname",
//!   "result": {"interfaces", "ips", "routes"}}`;
//! - libcni's result cache (`/var/lib/cni/results/*`): `{"kind": "cniCacheV1", "containerId",
//!   "config" (base64 of the plugin's JSON config), "ifName", "networkName", "netns"?,
//!   "result": {...}}`.
//!
//! The link kind and parent are not in a result: [`crate::capture::import_cni`] takes
//! them from the live kernel, or from `config` when the link is already gone.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{IpNet, Mac, RouteSpec};

/// Go's `[]byte` in JSON: standard base64, read with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Default directory of libcni's result cache.
pub const RESULT_CACHE_DIR: &str = "/var/lib/cni/results";

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("cannot read CNI file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI file {path} is not usable: {detail}")]
    Parse { path: PathBuf, detail: String },
}

/// One interface a CNI plugin set up in a pod's netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub source: PathBuf,
    /// Path of the pod's netns (`/proc/PID/ns/net`, `/var/run/netns/cni-...`).
    pub netns: PathBuf,
    pub ifname: String,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub network: Option<String>,
    pub mac: Option<Mac>,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<RouteSpec>,
    /// Result interfaces outside the pod (a veth's host side, a bridge).
    pub host_interfaces: Vec<String>,
    pub plugin: Option<PluginConfig>,
    /// `K8S_POD_UID` from libcni's `cniArgs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// What the network's other plugins set up that netguard cannot re-create.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cannot_restore: Vec<String>,
}

/// The parts of a plugin config that say how the link was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginConfig {
    /// Plugin type: `macvlan`, `vlan`, `bridge`, `ptp`, ...
    pub kind: String,
    pub master: Option<String>,
    pub mode: Option<String>,
    pub vlan_id: Option<u16>,
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct CniResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
struct Interface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IpConfig {
    #[serde(default)]
    interface: Option<usize>,
    address: String,
    #[serde(default)]
    gateway: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Route {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Checkpoint {
    netns: String,
    #[serde(default)]
    podname: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
    ifname: String,
    result: CniResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheV1 {
    container_id: Option<String>,
    #[serde(default)]
    config: Option<String>,
    if_name: String,
    #[serde(default)]
    network_name: Option<String>,
    #[serde(default)]
    netns: Option<String>,
    /// `CNI_ARGS` as key/value pairs.
    #[serde(default)]
    cni_args: Vec<(String, String)>,
    result: CniResult,
}

/// Reads one checkpoint or cache file.
pub fn read(path: &Path) -> Result<Attachment, CniError> {
    let bytes = std::fs::read(path).map_err(|source| CniError::Read {
        path: path.into(),
        source,
    })?;
    parse(path, &bytes)
}

/// Every file in `dir` that parses, and an error for each that does not.
pub fn read_dir(dir: &Path) -> Result<Vec<Result<Attachment, CniError>>, CniError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CniError::Read {
        path: dir.into(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files.iter().map(|p| read(p)).collect())
}

/// Parses either format (told apart by `"kind": "cniCacheV1"`).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Attachment, CniError> {
    let bad = |detail: String| CniError::Parse {
        path: path.into(),
        detail,
    };
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    if doc.get("kind").and_then(Value::as_str) == Some("cniCacheV1") {
        let cache: CacheV1 = serde_json::from_value(doc)
            .map_err(|e| bad(format!("not a libcni cache entry: {e}")))?;
        let config = match &cache.config {
            Some(b64) => Some(decode_config(b64).map_err(bad)?),
            None => None,
        };
        let mut att =
            attachment(path, &cache.result, &cache.if_name, cache.netns.as_deref()).map_err(bad)?;
        att.container_id = cache.container_id;
        att.network = cache.network_name;
        att.pod_uid = cache
            .cni_args
            .into_iter()
            .find(|(k, _)| k == "K8S_POD_UID")
            .map(|(_, v)| v);
        if let Some(config) = &config {
            att.plugin = plugin_config(config);
            att.cannot_restore = cannot_restore(config);
        }
        Ok(att)
    } else {
        let cp: Checkpoint = serde_json::from_value(doc).map_err(|e| {
            bad(format!(
                "neither a libcni cache entry nor a CNI checkpoint: {e}"
            ))
        })?;
        let mut att = attachment(path, &cp.result, &cp.ifname, Some(&cp.netns)).map_err(bad)?;
        att.container_id = cp.sandbox;
        att.pod = cp.podname;
        Ok(att)
    }
}

/// The interface `ifname` of a result, configured as the CNI plugins' `ConfigureIface` does:
/// only IPs whose `interface` index names it; a route without `gw` goes via the first gateway
/// of its family, if any.
fn attachment(
    path: &Path,
    result: &CniResult,
    ifname: &str,
    netns: Option<&str>,
) -> Result<Attachment, String> {
    let in_pod = |i: &Interface| i.sandbox.as_deref().is_some_and(|s| !s.is_empty());
    let index = result
        .interfaces
        .iter()
        .position(|i| i.name == ifname && in_pod(i))
        .or_else(|| result.interfaces.iter().position(|i| i.name == ifname));
    let iface = index.map(|i| &result.interfaces[i]);
    let netns = netns
        .filter(|n| !n.is_empty())
        .or_else(|| iface.and_then(|i| i.sandbox.as_deref()))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            format!(
                "no netns for {ifname} (neither the file nor its interface says where it lives)"
            )
        })?;
    let mac = match iface
        .and_then(|i| i.mac.as_deref())
        .filter(|m| !m.is_empty())
    {
        Some(m) => Some(m.parse::<Mac>()?),
        None => None,
    };
    let mut addresses = Vec::new();
    let (mut gw4, mut gw6) = (None, None);
    for ip in result
        .ips
        .iter()
        .filter(|ip| index.is_some() && ip.interface == index)
    {
        addresses.push(ip.address.parse::<IpNet>()?);
        if let Some(gw) = ip.gateway.as_deref().filter(|g| !g.is_empty()) {
            let gw: IpAddr = gw.parse().map_err(|_| format!("bad gateway '{gw}'"))?;
            let slot = if gw.is_ipv4() { &mut gw4 } else { &mut gw6 };
            slot.get_or_insert(gw);
        }
    }
    let mut routes = Vec::new();
    for r in &result.routes {
        let dst = r.dst.parse::<IpNet>()?.network();
        let gateway = match r.gw.as_deref().filter(|g| !g.is_empty()) {
            Some(gw) => Some(
                gw.parse::<IpAddr>()
                    .map_err(|_| format!("bad route gateway '{gw}'"))?,
            ),
            None if dst.addr.is_ipv4() => gw4,
            None => gw6,
        };
        routes.push(RouteSpec {
            dst,
            gateway,
            onlink: false,
            metric: None,
        });
    }
    let host_interfaces = result
        .interfaces
        .iter()
        .filter(|i| !in_pod(i))
        .map(|i| i.name.clone())
        .collect();
    Ok(Attachment {
        source: path.into(),
        netns: PathBuf::from(netns),
        ifname: ifname.to_string(),
        container_id: None,
        pod: None,
        network: None,
        mac,
        addresses,
        routes,
        host_interfaces,
        plugin: None,
        pod_uid: None,
        cannot_restore: Vec::new(),
    })
}

/// Plugin types that create the pod's link.
const LINK_PLUGINS: &[&str] = &["macvlan", "vlan", "bridge", "ptp", "ipvlan", "host-device"];

/// libcni's base64 `config`: a single plugin's config or a whole conflist.
fn decode_config(b64: &str) -> Result<Value, String> {
    let bytes = BASE64
        .decode(b64.trim())
        .map_err(|e| format!("its \"config\" is not base64: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("its \"config\" is not JSON: {e}"))
}

/// The plugins of a config: a conflist's list, or the single config itself.
fn plugins(conf: &Value) -> Vec<&Value> {
    match conf.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![conf],
    }
}

fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The link-making plugin's config; `None` when no plugin there makes links.
fn plugin_config(conf: &Value) -> Option<PluginConfig> {
    let plugin = plugins(conf)
        .into_iter()
        .find(|p| LINK_PLUGINS.contains(&plugin_type(p)))?;
    let text = |k: &str| plugin.get(k).and_then(Value::as_str).map(str::to_string);
    let num = |k: &str| plugin.get(k).and_then(Value::as_u64);
    Some(PluginConfig {
        kind: text("type").unwrap_or_default(),
        master: text("master"),
        mode: text("mode"),
        vlan_id: num("vlanId").and_then(|v| u16::try_from(v).ok()),
        bridge: text("bridge"),
        mtu: num("mtu").and_then(|v| u32::try_from(v).ok()),
    })
}

/// Plugins whose work netguard's snapshot holds (the link, its addresses and routes) or that
/// keep their state outside the pod's link (iptables rules keyed by the pod's address).
const RESTORABLE_PLUGINS: &[&str] = &["netguard", "portmap", "firewall", "loopback"];

/// What the plugins of a network config set up that netguard does not re-create with the
/// link: `bandwidth`'s tc qdiscs, `tuning`'s sysctls, and whatever a plugin it does not know
/// did (ethtool settings, say). Shown in `status` for the link.
pub fn cannot_restore(conf: &Value) -> Vec<String> {
    plugins(conf)
        .into_iter()
        .filter_map(|p| {
            let kind = plugin_type(p);
            if LINK_PLUGINS.contains(&kind) || RESTORABLE_PLUGINS.contains(&kind) {
                return None;
            }
            Some(match kind {
                "bandwidth" => "tc qdiscs of the bandwidth plugin (rate limits)".to_string(),
                "tuning" => {
                    let sysctls: Vec<String> = p
                        .get("sysctl")
                        .and_then(Value::as_object)
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default();
                    if sysctls.is_empty() {
                        "settings of the tuning plugin".to_string()
                    } else {
                        format!("sysctls of the tuning plugin ({})", sysctls.join(", "))
                    }
                }
                "" => "what a plugin without a type set up".to_string(),
                other => format!("what the {other} plugin set up (ethtool or other settings)"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/cni")
            .join(name)
    }

    #[test]
    fn field_report_001_checkpoint() {
        let att = read(&data("checkpoint-06c9b8d0a800")).unwrap();
        assert_eq!(att.netns, PathBuf::from("/proc/111576/ns/net"));
        assert_eq!(att.ifname, "eth0");
        assert_eq!(att.pod.as_deref(), Some("xxxx"));
        assert_eq!(att.mac, Some("6e:92:1a:b4:fc:34".parse().unwrap()));
        assert_eq!(att.addresses, vec!["10.161.75.155/22".parse().unwrap()]);
        assert_eq!(att.routes.len(), 1);
        assert_eq!(att.routes[0].to_string(), "default via 10.161.72.1");
        assert!(att.plugin.is_none());
    }

    #[test]
    fn libcni_cache_with_macvlan_config_and_gatewayless_routes() {
        let att = read(&data("cache-macvlan-eth0")).unwrap();
        assert_eq!(att.netns, PathBuf::from("/var/run/netns/cni-1234"));
        assert_eq!(att.container_id.as_deref(), Some("2f843b3a7858"));
        assert_eq!(att.network.as_deref(), Some("macvlan-net"));
        assert_eq!(att.addresses, vec!["10.85.223.57/24".parse().unwrap()]);
        let routes: Vec<String> = att.routes.iter().map(|r| r.to_string()).collect();
        // A route without "gw" goes via the interface's gateway, as the CNI plugins do.
        assert_eq!(
            routes,
            vec!["default via 10.85.223.1", "10.85.0.0/16 via 10.85.223.1"]
        );
        let plugin = att.plugin.unwrap();
        assert_eq!(plugin.kind, "macvlan");
        assert_eq!(plugin.master.as_deref(), Some("eth0.3"));
        assert_eq!(plugin.mode.as_deref(), Some("bridge"));
    }

    #[test]
    fn libcni_cache_of_a_bridge_conflist_names_the_host_side() {
        let att = read(&data("cache-bridge-eth0")).unwrap();
        assert_eq!(att.netns, PathBuf::from("/var/run/netns/cni-abcd"));
        assert_eq!(
            att.host_interfaces,
            vec!["cni0".to_string(), "veth1a2b3c4d".to_string()]
        );
        let plugin = att.plugin.unwrap();
        assert_eq!(
            (plugin.kind.as_str(), plugin.bridge.as_deref(), plugin.mtu),
            ("bridge", Some("cni0"), Some(1450))
        );
    }

    #[test]
    fn unusable_files_say_which_and_why() {
        let err = parse(Path::new("/x/junk"), b"{\"hello\": 1}").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/x/junk")
                && text.contains("neither a libcni cache entry nor a CNI checkpoint"),
            "{text}"
        );
        let err = parse(Path::new("/x/half"), b"{\"netns\": \"/proc/1/ns/net\"").unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
        let no_ns =
            br#"{"kind":"cniCacheV1","ifName":"eth0","result":{"interfaces":[{"name":"eth0"}]}}"#;
        assert!(parse(Path::new("/x/nons"), no_ns)
            .unwrap_err()
            .to_string()
            .contains("no netns"));
    }

    #[test]
    fn a_cache_entry_names_its_pod_and_what_its_plugins_did_beyond_the_link() {
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0", "name": "pods",
            "plugins": [
                { "type": "bridge", "bridge": "cni0" },
                { "type": "tuning", "sysctl": { "net.ipv4.conf.eth0.arp_notify": "1" } },
                { "type": "bandwidth", "ingressRate": 1000000, "ingressBurst": 100000 },
                { "type": "portmap" },
                { "type": "sriov-tuner" },
                { "type": "netguard" }
            ]
        });
        let b64 = BASE64.encode(conflist.to_string());
        let doc = serde_json::json!({
            "kind": "cniCacheV1", "containerId": "c1", "config": b64, "ifName": "eth0",
            "networkName": "pods",
            "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_UID", "5f1c"]],
            "result": { "interfaces": [{ "name": "eth0", "sandbox": "/run/netns/p" }] }
        });
        let att = parse(Path::new("/x/c"), doc.to_string().as_bytes()).unwrap();
        assert_eq!(att.pod_uid.as_deref(), Some("5f1c"));
        assert_eq!(
            att.netns,
            PathBuf::from("/run/netns/p"),
            "from interfaces[].sandbox"
        );
        assert_eq!(
            att.cannot_restore,
            [
                "sysctls of the tuning plugin (net.ipv4.conf.eth0.arp_notify)",
                "tc qdiscs of the bandwidth plugin (rate limits)",
                "what the sriov-tuner plugin set up (ethtool or other settings)",
            ]
        );
        // A plain bridge network: nothing beyond what netguard records.
        assert!(read(&data("cache-bridge-eth0"))
            .unwrap()
            .cannot_restore
            .is_empty());
    }
}
