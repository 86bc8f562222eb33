//! Human-readable lines and tables.

use std::path::Path;
use std::process::ExitCode;

use chrono::Local;
use netguard::event::{Event, EventKind, Place};
use netguard::report;

/// `08:12:01.123  move      eth0 -> dev3   ifindex 3  netns 4026532118 (/run/netns/c1) -> init_net  cause netns-teardown  by kworker/u4:1[57]`
pub fn event_line(event: &Event) -> String {
    let time = event.time.with_timezone(&Local).format("%H:%M:%S%.3f");
    let mut line = format!("{time}  {:<15}", event.kind.as_str());
    let name = |p: &Option<Place>| p.as_ref().and_then(|p| p.name.clone());
    let ifindex = |p: &Option<Place>| p.as_ref().and_then(|p| p.ifindex);
    let netns = |p: &Option<Place>| p.as_ref().map(|p| p.netns.to_string());
    match event.kind {
        EventKind::TeardownBegin | EventKind::TeardownEnd => {
            if let Some(ns) = netns(&event.from) {
                line += &format!("netns {ns}");
            }
        }
        _ => {
            let names = match (name(&event.from), name(&event.to)) {
                (Some(a), Some(b)) if a != b => format!("{a} -> {b}"),
                (Some(a), _) | (None, Some(a)) => a,
                (None, None) => "?".into(),
            };
            line += &format!("{names:<16}");
            let indexes = match (ifindex(&event.from), ifindex(&event.to)) {
                (Some(a), Some(b)) if a != b => format!("ifindex {a} -> {b}"),
                (Some(a), _) | (None, Some(a)) => format!("ifindex {a}"),
                (None, None) => String::new(),
            };
            line += &format!("{indexes:<12}");
            let places = match (netns(&event.from), netns(&event.to)) {
                (Some(a), Some(b)) if a != b => format!("netns {a} -> {b}"),
                (Some(a), _) | (None, Some(a)) => format!("netns {a}"),
                (None, None) => String::new(),
            };
            line += &format!("  {places}");
        }
    }
    line += &format!("  cause {}", event.cause_text());
    if let Some(kind) = &event.link_kind {
        line += &format!("  kind {kind}");
    }
    if event.netns_dying == Some(true) {
        line += "  (netns dying)";
    }
    if let Some(code) = event.result.filter(|c| *c != 0) {
        line += &format!("  failed: {}", std::io::Error::from_raw_os_error(-code));
    }
    if let Some(by) = &event.by {
        line += &format!("  by {by}");
    }
    line
}

/// `netguard report FILE`.
pub fn report(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let events = netguard::recording::read(path)?;
    let timelines = report::timelines(&events);
    let cascades = report::cascades(&events);
    if json {
        for timeline in &timelines {
            println!("{}", serde_json::to_string(timeline)?);
        }
        for cascade in &cascades {
            println!("{}", serde_json::json!({ "cascade": cascade }));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if timelines.is_empty() {
        println!("{}: no device events", path.display());
    }
    for timeline in &timelines {
        let mut header = format!("device {}", timeline.names.join(" -> "));
        if let Some(kind) = &timeline.link_kind {
            header += &format!("  kind {kind}");
        }
        if let Some(mac) = &timeline.perm_addr {
            header += &format!("  perm {mac}");
        }
        if let report::DeviceId::Card { bus_addr, .. } = &timeline.id {
            header += &format!("  bus {bus_addr}");
        }
        println!("{header}");
        println!("  {}", timeline.path.join(" -> "));
        for event in &timeline.events {
            println!("  {}", event_line(event));
        }
        println!();
    }
    for cascade in &cascades {
        println!("cascade");
        for line in cascade.lines(&event_line) {
            println!("  {line}");
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
