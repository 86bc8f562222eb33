//! The tracer scenarios, each asserting the exact fields of the events it causes.

use std::process::{Command, Stdio};
use std::time::Duration;

use netguard::event::{Cause, Event, EventKind};
use netguard::trace::BackendKind;
use netguard_tests::IP;

use crate::Trace;
use crate::{causes, moves};

/// TCG guests are slow, and netns cleanup runs in a kworker some time after `ip netns del`.
pub const WAIT: Duration = Duration::from_secs(15);

pub type Outcome = Result<(), String>;

pub async fn run_all(trace: &Trace, wanted: &dyn Fn(&str) -> bool) -> Vec<(&'static str, Outcome)> {
    let mut results = Vec::new();
    // (a) then (b): the refund scenario needs the NIC that (a) lent.
    if wanted("explicit-move") || wanted("teardown-refund") {
        let lent = explicit_move(trace).await;
        let key = lent.as_ref().ok().copied().flatten();
        results.push(("explicit-move", lent.map(|_| ())));
        results.push(("teardown-refund", teardown_refund(trace, key).await));
        cleanup();
    }
    if wanted("veth-dies-with-netns") {
        results.push(("veth-dies-with-netns", veth_dies_with_netns(trace).await));
        cleanup();
    }
    if wanted("rename") {
        results.push(("rename", rename(trace).await));
        cleanup();
    }
    if wanted("driver-reload-causes") {
        results.push((
            "driver-reload-causes",
            causes::driver_reload_causes(trace).await,
        ));
        cleanup();
    }
    if wanted("1000-moves") {
        results.push(("1000-moves", thousand_moves(trace).await));
        cleanup();
    }
    results
}

/// Runs iproute2, returning its stderr as the error.
pub fn ip(args: &[&str]) -> Outcome {
    let out = Command::new(IP)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

pub fn netns_inode(name: &str) -> Result<u64, String> {
    netguard::netns::inode_of(std::path::Path::new(&format!("/run/netns/{name}")))
        .map_err(|e| e.to_string())
}

/// Puts the guest back as it booted: eth0..eth2 home under their names, no test netns.
pub fn cleanup() {
    for ns in ["c1", "c2", "c3", "c4", "p1", "p2", "p3", "p4"] {
        let _ = Command::new(IP)
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    for link in ["mv0", "eth1.3", "eth1.5"] {
        let _ = Command::new(IP)
            .args(["link", "del", link])
            .stderr(Stdio::null())
            .status();
    }
    // Let refunds land before renaming NICs home by their MAC's last byte (…:56 eth0, :57 eth1, :58 eth2).
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(out) = Command::new(IP).args(["-o", "link"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line
                .split(':')
                .nth(1)
                .map(|s| s.trim().split('@').next().unwrap_or("").to_string());
            let home = ["56", "57", "58"]
                .iter()
                .position(|tail| line.contains(&format!("52:54:00:12:34:{tail}")));
            if let (Some(name), Some(n)) = (name, home) {
                let home = format!("eth{n}");
                // Down as at boot: a scenario may have set it up, and an up NIC cannot be renamed.
                let _ = Command::new(IP)
                    .args(["link", "set", &name, "down"])
                    .status();
                if name != home {
                    let _ = Command::new(IP)
                        .args(["link", "set", &name, "name", &home])
                        .status();
                }
            }
        }
    }
}

pub fn expect<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: T,
    want: T,
    event: &Event,
) -> Outcome {
    if got != want {
        return Err(format!(
            "{what}: got {got:?}, want {want:?} in {}",
            serde_json::to_string(event).unwrap_or_default()
        ));
    }
    Ok(())
}

pub fn from_name(e: &Event) -> Option<&str> {
    e.from.as_ref().and_then(|p| p.name.as_deref())
}

pub fn to_name(e: &Event) -> Option<&str> {
    e.to.as_ref().and_then(|p| p.name.as_deref())
}

/// (a) e1000 eth1 moved into netns c1 and renamed eth0 on the way: one move, cause explicit,
/// by `ip`. Returns the device key for (b).
async fn explicit_move(trace: &Trace) -> Result<Option<netguard::event::DeviceKey>, String> {
    ip(&["netns", "add", "c1"])?;
    let c1 = netns_inode("c1")?;
    let mark = trace.mark();
    ip(&["link", "set", "eth1", "netns", "c1", "name", "eth0"])?;
    let found = trace
        .wait_for(mark, 1, WAIT, "move eth1 -> eth0 into c1", |e| {
            e.kind == EventKind::Move && from_name(e) == Some("eth1")
        })
        .await?;
    let e = &found[0];
    expect("cause", e.cause, Cause::Explicit, e)?;
    // do_setlink moves first (keeping the name unless it clashes in c1) and renames after:
    // the eBPF backends see that as a move eth1 -> eth1 then a rename eth1 -> eth0 in c1.
    if to_name(e) != Some("eth0") {
        let renamed = trace
            .wait_for(mark, 1, WAIT, "rename eth1 -> eth0 in c1", |r| {
                r.kind == EventKind::Rename && r.device == e.device && to_name(r) == Some("eth0")
            })
            .await?;
        let r = &renamed[0];
        expect("renamed from", from_name(r), to_name(e), r)?;
        expect(
            "renamed in",
            r.to.as_ref().map(|p| p.netns.inode),
            Some(c1),
            r,
        )?;
        expect(
            "renamed by",
            r.by.as_ref().map(|a| a.comm.as_str()),
            Some("ip"),
            r,
        )?;
    }
    expect(
        "from init_net",
        e.from.as_ref().map(|p| p.netns.is_init()),
        Some(true),
        e,
    )?;
    expect(
        "to netns",
        e.to.as_ref().map(|p| p.netns.inode),
        Some(c1),
        e,
    )?;
    expect(
        "to netns named",
        e.to.as_ref()
            .map(|p| p.netns.names.contains(&"/run/netns/c1".to_string())),
        Some(true),
        e,
    )?;
    expect("result", e.result.unwrap_or(0), 0, e)?;
    expect(
        "perm addr",
        e.perm_addr.as_deref(),
        Some("52:54:00:12:34:57"),
        e,
    )?;
    if trace.backend != BackendKind::Netlink {
        expect("by", e.by.as_ref().map(|a| a.comm.as_str()), Some("ip"), e)?;
    }
    Ok(e.device)
}

/// (b) c1 deleted while the host has its own eth0: the kernel refunds the NIC as devN.
async fn teardown_refund(trace: &Trace, key: Option<netguard::event::DeviceKey>) -> Outcome {
    let c1 = netns_inode("c1")?;
    let mark = trace.mark();
    ip(&["netns", "del", "c1"])?;
    let found = trace
        .wait_for(mark, 1, WAIT, "move eth0 -> devN out of c1", |e| {
            e.kind == EventKind::Move && from_name(e) == Some("eth0")
        })
        .await?;
    let e = &found[0];
    expect("cause", e.cause, Cause::NetnsTeardown, e)?;
    expect(
        "from netns",
        e.from.as_ref().map(|p| p.netns.inode),
        Some(c1),
        e,
    )?;
    expect(
        "to init_net",
        e.to.as_ref().map(|p| p.netns.is_init()),
        Some(true),
        e,
    )?;
    let after = to_name(e).unwrap_or("");
    let is_dev_n = after
        .strip_prefix("dev")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !is_dev_n {
        return Err(format!(
            "name after: got {after:?}, want devN in {}",
            serde_json::to_string(e).unwrap_or_default()
        ));
    }
    if key.is_some() {
        expect("same device as the lend", e.device, key, e)?;
    }
    trace
        .wait_for(mark, 1, WAIT, "teardown-begin", |e| {
            e.kind == EventKind::TeardownBegin
        })
        .await?;
    println!("NGVM INFO {}: refunded as {after}", trace.backend);
    Ok(())
}

/// (c) a veth whose peer lives in a netns that is deleted: both ends unregistered.
async fn veth_dies_with_netns(trace: &Trace) -> Outcome {
    ip(&["netns", "add", "c2"])?;
    let c2 = netns_inode("c2")?;
    let mark = trace.mark();
    ip(&[
        "link", "add", "va0", "type", "veth", "peer", "name", "vb0", "netns", "c2",
    ])?;
    let registered = trace
        .wait_for(mark, 2, WAIT, "register va0 and vb0", |e| {
            e.kind == EventKind::Register && matches!(to_name(e), Some("va0" | "vb0"))
        })
        .await?;
    for e in &registered {
        expect("link kind", e.link_kind.as_deref(), Some("veth"), e)?;
    }
    let mark = trace.mark();
    ip(&["netns", "del", "c2"])?;
    let gone = trace
        .wait_for(mark, 2, WAIT, "unregister va0 and vb0", |e| {
            e.kind == EventKind::Unregister && matches!(from_name(e), Some("va0" | "vb0"))
        })
        .await?;
    let inner = gone
        .iter()
        .find(|e| from_name(e) == Some("vb0"))
        .ok_or("no unregister for vb0")?;
    expect(
        "vb0 netns",
        inner.from.as_ref().map(|p| p.netns.inode),
        Some(c2),
        inner,
    )?;
    expect("vb0 netns dying", inner.netns_dying, Some(true), inner)?;
    expect("vb0 cause", inner.cause, Cause::NetnsTeardown, inner)?;
    let outer = gone
        .iter()
        .find(|e| from_name(e) == Some("va0"))
        .ok_or("no unregister for va0")?;
    expect(
        "va0 in init_net",
        outer.from.as_ref().map(|p| p.netns.is_init()),
        Some(true),
        outer,
    )?;
    expect(
        "va0 link kind",
        outer.link_kind.as_deref(),
        Some("veth"),
        outer,
    )?;
    Ok(())
}

/// (d) renames in init_net, there and back.
async fn rename(trace: &Trace) -> Outcome {
    let mark = trace.mark();
    ip(&["link", "set", "eth2", "name", "wan0"])?;
    ip(&["link", "set", "wan0", "name", "eth2"])?;
    let found = trace
        .wait_for(mark, 2, WAIT, "rename eth2 -> wan0 -> eth2", |e| {
            e.kind == EventKind::Rename
        })
        .await?;
    let (there, back) = (&found[0], &found[1]);
    expect("old name", from_name(there), Some("eth2"), there)?;
    expect("new name", to_name(there), Some("wan0"), there)?;
    expect(
        "ifindex kept",
        there.from.as_ref().map(|p| p.ifindex),
        there.to.as_ref().map(|p| p.ifindex),
        there,
    )?;
    expect(
        "in init_net",
        there.from.as_ref().map(|p| p.netns.is_init()),
        Some(true),
        there,
    )?;
    expect("cause", there.cause, Cause::Explicit, there)?;
    expect(
        "back",
        (from_name(back), to_name(back)),
        (Some("wan0"), Some("eth2")),
        back,
    )?;
    expect("same device", back.device, there.device, back)?;
    if trace.backend != BackendKind::Netlink {
        expect(
            "by",
            there.by.as_ref().map(|a| a.comm.as_str()),
            Some("ip"),
            there,
        )?;
    }
    Ok(())
}

/// (e) 1,000 moves back and forth as fast as the guest can: every one seen, none dropped.
async fn thousand_moves(trace: &Trace) -> Outcome {
    const MOVES: usize = 1000;
    ip(&["netns", "add", "c3"])?;
    ip(&["link", "add", "mv0", "type", "veth", "peer", "name", "mv1"])?;
    let mark = trace.mark();
    let elapsed = moves::back_and_forth("mv0", "/run/netns/c3", MOVES).await?;
    let found = trace
        .wait_for(mark, MOVES, Duration::from_secs(60), "moves of mv0", |e| {
            e.kind == EventKind::Move && from_name(e) == Some("mv0")
        })
        .await?;
    if found.len() != MOVES {
        return Err(format!("{} move events for {MOVES} moves", found.len()));
    }
    let dropped = trace.dropped().await;
    if dropped != 0 {
        return Err(format!("{dropped} events dropped"));
    }
    println!(
        "NGVM INFO {}: {MOVES} moves in {:.2}s, {} events seen, 0 dropped",
        trace.backend,
        elapsed.as_secs_f64(),
        found.len()
    );
    Ok(())
}

/// (f) `netguard trace --json --record` around (a)-(d), then `netguard report` of the recording.
pub async fn cli_record_report(backend: BackendKind) -> Outcome {
    let record = format!("/tmp/record-{backend}.jsonl");
    let _ = std::fs::remove_file(&record);
    let mut child = Command::new("/bin/netguard")
        .args([
            "trace",
            "--backend",
            backend.as_str(),
            "--json",
            "--record",
            &record,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start netguard trace: {e}"))?;
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("piped"));
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut banner).map_err(|e| e.to_string())?;
    if !banner.contains(&format!("tracing with the {backend} backend")) {
        let _ = child.kill();
        return Err(format!("netguard trace said {banner:?}"));
    }
    let steps: &[&[&str]] = &[
        &["netns", "add", "c1"],
        &["link", "set", "eth1", "netns", "c1", "name", "eth0"],
        &["netns", "del", "c1"],
    ];
    for step in steps {
        ip(step)?;
    }
    // The refund lands asynchronously; wait until devN shows up in init_net.
    let mut refunded = None;
    for _ in 0..300 {
        let out = Command::new(IP)
            .args(["-o", "link"])
            .output()
            .map_err(|e| e.to_string())?;
        refunded = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("52:54:00:12:34:57"))
            .and_then(|l| l.split(':').nth(1))
            .map(|n| n.trim().to_string())
            .filter(|n| n.starts_with("dev"));
        if refunded.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dev_n = refunded.ok_or("eth1 never came back as devN")?;
    ip(&["link", "set", &dev_n, "name", "eth1"])?;
    ip(&["netns", "add", "c2"])?;
    ip(&[
        "link", "add", "va0", "type", "veth", "peer", "name", "vb0", "netns", "c2",
    ])?;
    ip(&["netns", "del", "c2"])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("netguard trace exited {}: {rest}", out.status));
    }
    if !rest.contains("events seen, 0 dropped") {
        return Err(format!("exit summary missing or drops: {rest:?}"));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let teardown = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Event>(l).ok())
        .find(|e| {
            e.kind == EventKind::Move
                && e.cause == Cause::NetnsTeardown
                && from_name(e) == Some("eth0")
        })
        .ok_or_else(|| format!("--json output has no netns-teardown move of eth0:\n{stdout}"))?;
    expect(
        "refund name",
        to_name(&teardown),
        Some(dev_n.as_str()),
        &teardown,
    )?;
    expect(
        "refund to init_net",
        teardown.to.as_ref().map(|p| p.netns.is_init()),
        Some(true),
        &teardown,
    )?;
    cleanup();

    let report = Command::new("/bin/netguard")
        .args(["report", &record])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&report.stdout);
    let nic_line = format!("device eth1 -> eth0 -> {dev_n} -> eth1");
    if !report.status.success() || !text.contains(&nic_line) {
        return Err(format!(
            "report lacks {nic_line:?}:\n{text}{}",
            String::from_utf8_lossy(&report.stderr)
        ));
    }
    if !text
        .lines()
        .any(|l| l.starts_with("device va0") || l.starts_with("device vb0"))
    {
        return Err(format!("report lacks the veth pair:\n{text}"));
    }
    println!("NGVM INFO {backend}: report timeline: {nic_line}");
    Ok(())
}
