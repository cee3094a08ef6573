//! A replay of 100,000 transactions' history rebuilds read tables equal to the live ones.
//!
//! `tally bench` drives 100,000 transactions through a real Tally (half ADD_MONEY, half
//! SEND_AIRTIME) and checks every balance; then `tally replay --compare-with` rebuilds the
//! read tables from the log into an empty store and compares them with the live store row by
//! row. It prints the replay's rate, which the suite shows.

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
    let mut app = TestApp::spawn_on(backend).await?;
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

    // The embedded log is one process's at a time; on Kafka the replay runs beside Tally.
    if backend == Backend::Embedded {
        let status = app.terminate()?;
        anyhow::ensure!(status.success(), "tally exited with {status}");
    }
    let (code, replay) = app.replay_compared()?;
    eprintln!("{replay}");
    assert_eq!(code, 0, "{replay}");

    assert!(replay.contains("rows differing     0"), "{replay}");
    let replayed: u64 = (replay.lines())
        .find_map(|line| line.strip_prefix("replayed records"))
        .and_then(|count| count.trim().parse().ok())
        .context("the replay printed no record count")?;
    // Each transaction is one command and three or four events, besides the accounts'.
    assert!(replayed >= 400_000, "{replay}");
    Ok(())
}

on_both_backends!(a_replay_after_100_000_transactions_equals_the_live_read_tables);
