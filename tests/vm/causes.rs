//! Why devices go and come back: a driver reload under a vlan and a pod's macvlan, each line
//! asserted for its cause and the parent or driver it names.

use netguard::event::{Cause, Event, EventKind};

use crate::scenarios::{expect, from_name, ip, to_name, Outcome, WAIT};
use crate::Trace;

/// vlan `eth1.9` on e1000 `eth1`, a macvlan on the vlan as `eth0` in pod netns `p1`, then
/// `modprobe -r e1000; modprobe e1000`.
pub async fn driver_reload_causes(trace: &Trace) -> Outcome {
    let setup = trace.mark();
    ip(&["netns", "add", "p1"])?;
    ip(&[
        "link", "add", "link", "eth1", "name", "eth1.9", "type", "vlan", "id", "9",
    ])?;
    ip(&[
        "link", "add", "link", "eth1.9", "name", "mv9", "type", "macvlan", "mode", "bridge",
    ])?;
    ip(&["link", "set", "mv9", "netns", "p1"])?;
    ip(&["-n", "p1", "link", "set", "mv9", "name", "eth0"])?;
    let p1 = crate::scenarios::netns_inode("p1")?;
    // The setup's own events must be in before the mark (a rename, or for a backend that
    // found p1 late, the move's arrival under the new name).
    trace
        .wait_for(setup, 1, WAIT, "p1's macvlan named eth0", |e| {
            to_name(e) == Some("eth0") && e.to.as_ref().is_some_and(|p| p.netns.inode == p1)
        })
        .await?;
    let mark = trace.mark();
    crate::agent::reload_e1000()?;

    let in_init = |e: &Event| e.from.as_ref().is_some_and(|p| p.netns.is_init());
    let gone = trace
        .wait_for(mark, 3, WAIT, "unregister eth1, eth1.9, p1's eth0", |e| {
            e.kind == EventKind::Unregister
                && match from_name(e) {
                    Some("eth1" | "eth1.9") => in_init(e),
                    Some("eth0") => e.from.as_ref().is_some_and(|p| p.netns.inode == p1),
                    _ => false,
                }
        })
        .await?;
    let find = |name: &str| {
        gone.iter()
            .find(|e| from_name(e) == Some(name) && (name == "eth0") != in_init(e))
            .ok_or(format!("no unregister of {name}"))
    };
    let nic = find("eth1")?;
    expect("eth1 cause", nic.cause, Cause::DriverUnbind, nic)?;
    expect("eth1 driver", nic.driver.as_deref(), Some("e1000"), nic)?;
    let bus = nic.bus_addr.clone().ok_or(format!(
        "eth1 has no bus address: {}",
        serde_json::to_string(nic).unwrap_or_default()
    ))?;
    let vlan = find("eth1.9")?;
    expect("eth1.9 cause", vlan.cause, Cause::ParentGone, vlan)?;
    let parent = |e: &Event| e.parent.as_ref().and_then(|p| p.name.clone());
    expect("eth1.9 parent", parent(vlan).as_deref(), Some("eth1"), vlan)?;
    let pod = find("eth0")?;
    expect("pod eth0 cause", pod.cause, Cause::ParentGone, pod)?;
    expect(
        "pod eth0 parent",
        parent(pod).as_deref(),
        Some("eth1.9"),
        pod,
    )?;
    expect(
        "pod eth0 kind",
        pod.link_kind.as_deref(),
        Some("macvlan"),
        pod,
    )?;

    let back = trace
        .wait_for(
            mark,
            1,
            WAIT,
            "register of the card at eth1's bus address",
            |e| e.kind == EventKind::Register && e.bus_addr.as_deref() == Some(bus.as_str()),
        )
        .await?;
    let back = &back[0];
    expect("card back cause", back.cause, Cause::DriverBind, back)?;
    expect(
        "card back driver",
        back.driver.as_deref(),
        Some("e1000"),
        back,
    )?;
    expect("card back name", to_name(back), Some("eth1"), back)?;
    expect("card back perm MAC", &back.perm_addr, &nic.perm_addr, back)?;
    // On the console, for a recording to read with `netguard report`.
    for event in [pod, vlan, nic, back] {
        println!(
            "NGVM INFO event {}",
            serde_json::to_string(event).unwrap_or_default()
        );
    }
    let _ = ip(&["netns", "del", "p1"]);
    Ok(())
}
