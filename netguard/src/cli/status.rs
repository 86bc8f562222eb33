//! `netguard status`.

use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use netguard::api::{self, ApiError, Request};
use netguard::runtime_failures;
use netguard::status::{self, Status};

/// How many of the latest runtime failures `status` shows.
const SHOWN_FAILURES: usize = 10;

use super::ops::Place;

pub fn run(place: &Place, json: bool) -> anyhow::Result<ExitCode> {
    super::require_root()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let (mut status, no_agent) = runtime.block_on(async {
        match api::request_to::<Status>(&place.socket, &place.meant(), &Request::Status).await {
            Ok(status) => Ok((status, None)),
            Err(no_agent @ ApiError::NoAgent { .. }) if !place.state_dir.exists() => {
                // Looking must not create a ledger.
                Ok((
                    Status {
                        agent: None,
                        rows: Vec::new(),
                        runtime_failures: Vec::new(),
                    },
                    Some(no_agent),
                ))
            }
            Err(no_agent @ ApiError::NoAgent { .. }) => {
                let (_lock, ledger, restorer) = place.open_locally().await?;
                let plan = restorer.dry_run(&ledger).await?;
                Ok::<_, anyhow::Error>((
                    Status {
                        agent: None,
                        rows: status::rows_with_plan(&ledger, &plan),
                        runtime_failures: Vec::new(),
                    },
                    Some(no_agent),
                ))
            }
            Err(e) => Err(e.into()),
        }
    })?;
    status.runtime_failures = runtime_failures::recent(&place.state_dir, SHOWN_FAILURES);
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    match (&status.agent, &no_agent) {
        (Some(agent), _) => {
            let up = (Utc::now() - agent.started).num_seconds();
            println!(
                "agent: pid {}, backend {}, up {}, {} passes, {} events",
                agent.pid,
                agent.backend,
                age(up),
                agent.passes,
                agent.events
            );
            for skipped in &agent.unavailable {
                println!("  not using {skipped}");
            }
        }
        (None, Some(why)) => println!(
            "{why}; showing the ledger in {} and the live kernel",
            place.state_dir.display()
        ),
        (None, None) => {}
    }
    print_runtime_failures(&status);
    if status.rows.is_empty() {
        println!("nothing guarded yet");
        return Ok(ExitCode::SUCCESS);
    }
    let live = status.agent.is_none();
    let mut table = vec![vec![
        "HOME".to_string(),
        "KIND".into(),
        "MAC".into(),
        "NOW".into(),
        "STATE".into(),
        if live { "LIVE" } else { "LAST EVENT" }.into(),
    ]];
    for entry in &status.rows {
        let row = &entry.row;
        let now = match (&row.now, row.kind.as_str()) {
            (Some(now), _) => now.clone(),
            (None, "nic") => "?".into(),
            (None, _) => format!("{} : {}", row.netns, row.name),
        };
        let mut state = row.state.clone();
        if let Some(reason) = &row.reason {
            state += &format!(" ({reason})");
        }
        let last = if live {
            entry.live.clone().unwrap_or_default()
        } else {
            entry
                .last_event
                .as_ref()
                .map(|e| {
                    format!(
                        "{} ago: {}",
                        age((Utc::now() - e.time).num_seconds()),
                        e.what
                    )
                })
                .unwrap_or_else(|| "-".into())
        };
        table.push(vec![
            row.name.clone(),
            row.kind.clone(),
            row.mac.clone().unwrap_or("-".into()),
            now,
            state,
            last,
        ]);
    }
    print_table(&table);
    print_notes(&status);
    Ok(ExitCode::SUCCESS)
}

/// Per link, what netguard does not re-create and its pod's earlier sandboxes.
fn print_notes(status: &Status) {
    for row in status.rows.iter().map(|e| &e.row) {
        if row.cannot_restore.is_empty() && row.history.is_empty() {
            continue;
        }
        println!("{} in {}:", row.name, row.netns);
        for what in &row.cannot_restore {
            println!("  not re-created by netguard: {what}");
        }
        for earlier in &row.history {
            println!("  earlier: {earlier}");
        }
    }
}

/// Runtime calls that went wrong where the ledger could not hear of it.
fn print_runtime_failures(status: &Status) {
    if status.runtime_failures.is_empty() {
        return;
    }
    println!("runtime calls that went wrong (latest last):");
    for failure in &status.runtime_failures {
        println!(
            "  {} ago: {}: {}",
            age((Utc::now() - failure.time).num_seconds()),
            failure.call,
            failure.why
        );
    }
}

fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn print_table(rows: &[Vec<String>]) {
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c + 1 == columns {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        println!("{}", cells.join("  "));
    }
}
