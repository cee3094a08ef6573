//! Faults on the real backends: Tally runs as separate role processes on Kafka and MariaDB
//! under a mixed load of keyed requests, and workers are killed with SIGKILL at random moments.
//! Whatever is killed, every accepted transaction ends exactly once, every account's event
//! stream stays gapless, every balance is what the accepted requests add up to, the read
//! tables equal a replay of the log into an empty database, and `tally verify` finds nothing:
//! every partition's hash chain holds across the deciders that were killed or fenced.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tally_tests::ledger_load::Load;
use tally_tests::{Deployment, Role};

const TRANSACTIONS: usize = 10_000;
const CLIENTS: usize = 64;
const ACCOUNTS: usize = 4;
/// How long the load may take to reach the point where a fault is due.
const PROGRESS_WAIT: Duration = Duration::from_secs(150);
/// The longest pause between killing a worker and starting it again.
const RESTART_PAUSE_MS_MAX: u64 = 1_500;

/// A number below `bound`, different on every run: the fault moments are random on purpose,
/// and printed so that a failing run can be told apart.
fn random_below(bound: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(bound)) as u64
}

/// A random moment of the load, as a number of answered requests between `from` and `to`
/// percent of it.
fn moment(from: u64, to: u64) -> usize {
    let percent = from + random_below(to - from);
    TRANSACTIONS * percent as usize / 100
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

/// Runs the load on `deployment`, lets `faults` strike while it runs, then checks the ledger.
/// On failure the processes' log tails are printed.
async fn under_load<F>(mut deployment: Deployment, faults: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Deployment, &Load) -> Result<()>,
{
    let started = Instant::now();
    let outcome = async {
        let load = Arc::new(Load::prepare(&deployment, ACCOUNTS, TRANSACTIONS, CLIENTS).await?);
        let running = tokio::spawn(load.clone().run());
        faults(&mut deployment, &load).await?;
        let accepted = running.await.context("the load panicked")??;
        let loaded = started.elapsed();
        let crashed = deployment.exited()?;
        anyhow::ensure!(
            crashed.is_empty(),
            "processes exited on their own: {crashed:?}"
        );
        load.verify(&accepted).await?;
        deployment.assert_read_tables_match_a_replay().await?;
        deployment.assert_audit_clean()?;
        let resends = load.resends.load(Ordering::Relaxed);
        eprintln!(
            "loaded in {loaded:?}, verified in {:?}, {resends} resends",
            started.elapsed()
        );
        Ok(())
    }
    .await;
    if let Err(error) = &outcome {
        eprintln!("failed: {error:#}\n{}", deployment.log_tails());
    }
    outcome
}

async fn kill_and_restart(deployment: &mut Deployment, role: Role) -> Result<()> {
    deployment.kill(role, 0)?;
    let pause_ms = random_below(RESTART_PAUSE_MS_MAX);
    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    deployment.start(role, 0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_moments_lose_nothing_and_double_nothing() -> Result<()> {
    use Role::{Api, Decide, Process, Project};
    let deployment = Deployment::spawn(&[Api, Decide, Project, Process]).await?;
    let plan = [
        (moment(10, 30), vec![Decide]),
        (moment(35, 50), vec![Project]),
        (moment(55, 70), vec![Process]),
        (moment(75, 90), vec![Decide, Project, Process]),
    ];
    eprintln!("kills after these many answers: {plan:?}");
    under_load(
        deployment,
        async move |deployment: &mut Deployment, load: &Load| {
            for (answered, roles) in plan {
                wait_answered(load, answered).await?;
                for role in roles {
                    kill_and_restart(deployment, role).await?;
                }
            }
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_decider_of_two_is_replaced_by_the_other() -> Result<()> {
    use Role::{Api, Decide, Process, Project};
    let deployment = Deployment::spawn(&[Api, Api, Decide, Decide, Project, Process]).await?;
    let (answered, victim) = (moment(25, 60), random_below(2) as usize);
    eprintln!("kills decider {victim} after {answered} answers, for good");
    under_load(
        deployment,
        async move |deployment: &mut Deployment, load: &Load| {
            wait_answered(load, answered).await?;
            deployment.kill(Decide, victim)
        },
    )
    .await
}
