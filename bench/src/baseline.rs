//! The baseline: the shell script an operator would write to put the links back, one `ip`
//! command per change, the same changes the restorer makes.

use std::fmt::Write;

use crate::world::{Container, World, IFNAME, MTU};

/// The script for every container of `world`, run with `sh -e`.
pub fn script(world: &World) -> String {
    let host = world
        .host_path
        .file_name()
        .expect("a netns path has a name")
        .to_string_lossy()
        .into_owned();
    let mut s = String::new();
    for c in &world.containers {
        let Container {
            netns,
            host_side,
            host_mac,
            mac,
            addr,
            ..
        } = c;
        let _ = writeln!(
            s,
            "ip -n {host} link add {host_side} address {host_mac} mtu {MTU} type veth peer name {IFNAME} address {mac} mtu {MTU} netns {netns}"
        );
        let _ = writeln!(s, "ip -n {host} link set {host_side} up");
        let _ = writeln!(
            s,
            "ip -n {host} link set {host_side} master {}",
            c.bridge_name()
        );
        let _ = writeln!(s, "ip -n {netns} addr add {addr} dev {IFNAME}");
        let _ = writeln!(s, "ip -n {netns} link set {IFNAME} up");
        for route in Container::routes() {
            let _ = writeln!(s, "ip -n {netns} route add {route} dev {IFNAME}");
        }
    }
    s
}
