//! A replay of 100,000 transactions' history rebuilds read tables equal to the live ones, and
//! swapping them in keeps Tally exact.
//!
//! `tally bench` drives 100,000 transactions through a real Tally (half ADD_MONEY, half
//! SEND_AIRTIME) and checks every balance; then `tally replay --compare-with --swap` rebuilds
//! the read tables from the log into an empty store beside the running Tally, compares them
//! with the live store row by row, and puts them in its place. A second load then settles
//! exactly on the swapped tables. It prints the replay's rate and what the swap did, which the
//! suite shows. That the swapped tables go on equalling a replay is shown at a smaller scale,
//! where a second replay is cheap, by the swap's own suite.

use anyhow::{Context, Result};
use tally_tests::{Backend, TestApp, on_both_backends, tally_bin};

const TRANSACTIONS: &str = "100000";

fn tally(app: &TestApp, subcommand: &str, args: &[&str]) -> Result<String> {
    let output = std::process::Command::new(tally_bin()?)
        .arg(subcommand)
        .args(args)
        .env("TALLY_LOG", "warn")
        .output()
        .with_context(|| format!("cannot run tally {subcommand}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "tally {subcommand} against {} exited with {}:\n{stdout}\n{}",
        app.base_url,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

async fn a_replay_after_100_000_transactions_equals_the_live_read_tables(
    backend: Backend,
) -> Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let bench = tally(
        &app,
        "bench",
        &[
            "--url",
            &app.base_url,
            "--transactions",
            TRANSACTIONS,
            "--accounts",
            "64",
            "--concurrency",
            "64",
            "--sample-every",
            "1000",
        ],
    )?;
    eprintln!("{bench}");
    assert!(bench.contains(&format!("accepted transactions        {TRANSACTIONS}")));
    assert!(bench.contains("every account exact"), "{bench}");

    let scratch = app.scratch_store().await?;
    let live = app.live_store_url();
    let (code, replay) = app.replay_into(&scratch.url, &["--compare-with", &live, "--swap"])?;
    eprintln!("{replay}");
    assert_eq!(code, 0, "{replay}");

    assert!(replay.contains("rows differing     0"), "{replay}");
    assert!(
        replay.contains("swapped            generation 1"),
        "{replay}"
    );
    let replayed: u64 = (replay.lines())
        .find_map(|line| line.strip_prefix("replayed records"))
        .and_then(|count| count.trim().parse().ok())
        .context("the replay printed no record count")?;
    // Each transaction is one command and three or four events, besides the accounts'.
    assert!(replayed >= 400_000, "{replay}");

    let after = tally(
        &app,
        "bench",
        &[
            "--url",
            &app.base_url,
            "--transactions",
            "2000",
            "--accounts",
            "16",
        ],
    )?;
    assert!(after.contains("every account exact"), "{after}");
    Ok(())
}

on_both_backends!(a_replay_after_100_000_transactions_equals_the_live_read_tables);
