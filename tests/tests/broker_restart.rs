//! The Kafka broker stops and starts again in the middle of a mixed load on Tally's separate
//! role processes: requests sent while it is away are sent again with their keys, and once it
//! is back every accepted transaction ends exactly once with the balances the model predicts,
//! and the read tables equal a replay of the log into an empty database.
//!
//! This restarts the one broker on 127.0.0.1 that every Kafka test shares: run this binary
//! alone, never alongside other test binaries.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tally_tests::ledger_load::Load;
use tally_tests::{Deployment, Role};

const TRANSACTIONS: usize = 10_000;
const CLIENTS: usize = 64;
const ACCOUNTS: usize = 4;
/// How long the load may take to reach the moment the broker stops.
const PROGRESS_WAIT: Duration = Duration::from_secs(150);
/// How long the broker may take to stop on SIGTERM.
const BROKER_STOP_WAIT: Duration = Duration::from_secs(60);
/// How long `deploy/infra.sh up` may take to start the broker and see it answer.
const BROKER_START_WAIT: Duration = Duration::from_secs(150);

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The broker's pid, from the pid file `deploy/infra.sh` keeps, checked against its command
/// line so that no other process is signalled.
fn broker_pid() -> Result<String> {
    let infra = match std::env::var("TALLY_INFRA_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => PathBuf::from(std::env::var("HOME")?).join(".cache/tally-infra"),
    };
    let pid_file = infra.join("run/kafka.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("no broker pid in {}", pid_file.display()))?;
    let pid = pid.trim().to_owned();
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&command_line).contains("kafka.Kafka") {
        bail!("pid {pid} in {} is not a Kafka broker", pid_file.display());
    }
    Ok(pid)
}

async fn restart_broker() -> Result<()> {
    let pid = broker_pid()?;
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    anyhow::ensure!(stopped.success(), "cannot signal the broker {pid}");
    let started = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if started.elapsed() > BROKER_STOP_WAIT {
            bail!("the broker {pid} did not stop within {BROKER_STOP_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("broker stopped in {:?}", started.elapsed());
    let up = tokio::process::Command::new(repository().join("deploy/infra.sh"))
        .arg("up")
        .kill_on_drop(true)
        .status();
    let up = tokio::time::timeout(BROKER_START_WAIT, up).await;
    let up = up.context("deploy/infra.sh up timed out")??;
    anyhow::ensure!(up.success(), "deploy/infra.sh up failed: {up}");
    eprintln!("broker back after {:?}", started.elapsed());
    Ok(())
}

async fn wait_answered(load: &Load, answered: usize) -> Result<()> {
    let started = Instant::now();
    while load.answered.load(Ordering::Relaxed) < answered {
        if started.elapsed() > PROGRESS_WAIT {
            bail!("the load did not reach {answered} answers within {PROGRESS_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_load_loses_nothing_and_doubles_nothing() -> Result<()> {
    use Role::{Api, Decide, Process, Project};
    let mut deployment = Deployment::spawn(&[Api, Decide, Project, Process]).await?;
    let started = Instant::now();
    let outcome = async {
        let load = Arc::new(Load::prepare(&deployment, ACCOUNTS, TRANSACTIONS, CLIENTS).await?);
        let running = tokio::spawn(load.clone().run());
        wait_answered(&load, TRANSACTIONS * 2 / 5).await?;
        restart_broker().await?;
        let accepted = running.await.context("the load panicked")??;
        let crashed = deployment.exited()?;
        anyhow::ensure!(
            crashed.is_empty(),
            "processes exited on their own: {crashed:?}"
        );
        load.verify(&accepted).await?;
        deployment.assert_read_tables_match_a_replay().await?;
        let resends = load.resends.load(Ordering::Relaxed);
        eprintln!("verified after {:?}, {resends} resends", started.elapsed());
        Ok(())
    }
    .await;
    if let Err(error) = &outcome {
        eprintln!("failed: {error:#}\n{}", deployment.log_tails());
    }
    outcome
}
