//! `tally bench`: drives a Tally over HTTP the way API callers do and reports what it measured.
//!
//! Without `--url` it starts an embedded Tally in a temporary directory and measures that. It
//! opens `--accounts` accounts, funds each, then submits `--transactions` transactions (half
//! ADD_MONEY, half SEND_AIRTIME, none of which can fail) from `--concurrency` clients, as fast
//! as they can or at `--rate` a second. It reports the accepted rate, the rate at which
//! transactions became final, and submit-to-final latency percentiles over a sample watched
//! apart from the submitting clients, and it checks that every balance ends exactly where the
//! accepted requests put it. Speed goals live here, not in tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser};
use reqwest::Client;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::app;
use crate::settings::Settings;

/// How long the bench waits for every transaction to become final after the last submit.
const SETTLE_WAIT: Duration = Duration::from_secs(300);
/// Pause between two polls of a sampled transaction's status.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Money each account starts with: far more than its share of airtime can take.
const FUNDING: &str = "1000000.00";
const ADD_AMOUNT: &str = "2.00";
const AIRTIME_AMOUNT: &str = "1.00";

#[derive(Args, Clone, Debug)]
pub struct BenchSettings {
    /// A running Tally to measure; without it an embedded one is started.
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub accounts: usize,
    #[arg(long, default_value_t = 20_000)]
    pub transactions: usize,
    /// Clients submitting at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measure submit-to-final latency of one transaction in this many.
    #[arg(long, default_value_t = 10)]
    pub sample_every: usize,
    /// Most sampled transactions watched at once; samples beyond are skipped (and counted),
    /// so that watching never takes clients away from submitting.
    #[arg(long, default_value_t = 16)]
    pub samplers: usize,
    /// Submit at this many transactions a second, on a fixed schedule, instead of as fast
    /// as the clients can; latency then counts from each transaction's scheduled time.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Data directory of the embedded Tally; a temporary one by default.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Parser)]
struct EmbeddedArgs {
    #[command(flatten)]
    settings: Settings,
}

#[derive(Clone)]
struct Caller {
    token: String,
    uid: String,
}

#[derive(Default)]
struct Tally {
    accepted: usize,
    refused: usize,
    latencies_ms: Vec<f64>,
    skipped_samples: usize,
}

pub async fn run(settings: BenchSettings) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = settings
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_owned());
    let embedded = match &settings.url {
        Some(_) => None,
        None => Some(start_embedded(&data_dir).await?),
    };
    let url = match (&settings.url, &embedded) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(running)) => {
            let address = running
                .address
                .context("the embedded Tally serves no API")?;
            format!("http://{address}")
        }
        (None, None) => bail!("no Tally to measure"),
    };
    let client = Client::builder()
        .pool_max_idle_per_host(settings.concurrency)
        .build()?;
    let callers = open_accounts(&client, &url, settings.accounts).await?;
    let outcome = measure(&client, &url, &callers, &settings).await;
    if let Some(running) = embedded {
        running.stop().await?;
    }
    outcome
}

async fn start_embedded(data_dir: &std::path::Path) -> anyhow::Result<app::RunningApp> {
    let dir = data_dir.to_str().context("data directory is not UTF-8")?;
    let args = [
        "bench",
        "--data-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--bcrypt-cost",
        "10",
    ];
    let settings = EmbeddedArgs::try_parse_from(args)?.settings;
    app::start(settings, app::Roles::ALL).await
}

async fn open_accounts(client: &Client, url: &str, count: usize) -> anyhow::Result<Vec<Caller>> {
    let mut callers = Vec::with_capacity(count);
    let run = uuid::Uuid::new_v4().simple().to_string();
    for index in 0..count {
        let username = format!("bench-{}-{index}", &run[..8]);
        let password = "bench password, not secret";
        let credentials = json!({ "username": username, "password": password });
        post(client, url, "/signup/username", None, &credentials, 201).await?;
        let login = post(client, url, "/login", None, &credentials, 200).await?;
        let token = login["token"].as_str().context("no token")?.to_owned();
        let me: Value = client
            .get(format!("{url}/me"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let uid = me["uid"].as_str().context("no uid")?.to_owned();
        let account = json!({ "accountInfo": { "name": "Bench", "email": "bench@example.com",
                                               "phoneNumber": "+14155552671" } });
        post(
            client,
            url,
            &format!("/account/{uid}"),
            Some(&token),
            &account,
            201,
        )
        .await?;
        let fund =
            json!({ "transactionType": "ADD_MONEY", "addMoneyRequest": { "amount": FUNDING } });
        post(client, url, "/transaction", Some(&token), &fund, 202).await?;
        callers.push(Caller { token, uid });
    }
    Ok(callers)
}

async fn post(
    client: &Client,
    url: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
    expected: u16,
) -> anyhow::Result<Value> {
    let mut request = client.post(format!("{url}{path}")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != expected {
        bail!("{path} answered {status}, expected {expected}: {body}");
    }
    Ok(body)
}

fn transaction_body(index: usize) -> Value {
    if index.is_multiple_of(2) {
        json!({ "transactionType": "ADD_MONEY", "addMoneyRequest": { "amount": ADD_AMOUNT } })
    } else {
        json!({ "transactionType": "SEND_AIRTIME",
                "sendAirtimeRequest": {
                    "amount": AIRTIME_AMOUNT,
                    "phoneNumber": "+254712345678",
                } })
    }
}

async fn measure(
    client: &Client,
    url: &str,
    callers: &[Caller],
    settings: &BenchSettings,
) -> anyhow::Result<()> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let run = Arc::new(Run {
        next: AtomicUsize::new(0),
        started: Instant::now(),
        samplers: Arc::new(Semaphore::new(settings.samplers.max(1))),
    });
    let mut clients = JoinSet::new();
    for _ in 0..settings.concurrency.max(1) {
        let (client, url, callers) = (client.clone(), url.to_owned(), callers.to_vec());
        let (tally, run, settings) = (tally.clone(), run.clone(), settings.clone());
        clients.spawn(async move {
            submit_loop(&client, &url, &callers, &settings, &run, &tally).await
        });
    }
    let mut watchers = Vec::new();
    while let Some(done) = clients.join_next().await {
        watchers.extend(done??);
    }
    let submitted = run.started.elapsed();
    for watcher in watchers {
        watcher.await??;
    }
    settle(client, url, callers, settings.transactions).await?;
    let settled = run.started.elapsed();
    report(&*tally.lock().await, submitted, settled);
    Ok(())
}

/// What every submitting client shares.
struct Run {
    /// The next transaction index to submit.
    next: AtomicUsize,
    started: Instant,
    /// Transactions being watched until final; a sample that finds none free is skipped, so
    /// watching never slows submitting down.
    samplers: Arc<Semaphore>,
}

impl Run {
    /// When transaction `index` is due: at once without a target rate, else on the rate's
    /// schedule, so a Tally that falls behind is charged for the queue it builds.
    fn due(&self, index: usize, rate: Option<u32>) -> Instant {
        match rate {
            None => Instant::now(),
            Some(rate) => {
                let offset = Duration::from_secs_f64(index as f64 / f64::from(rate.max(1)));
                self.started + offset
            }
        }
    }
}

/// Submits transactions until every index is taken, and returns the watchers of those it
/// sampled.
async fn submit_loop(
    client: &Client,
    url: &str,
    callers: &[Caller],
    settings: &BenchSettings,
    run: &Run,
    tally: &Arc<Mutex<Tally>>,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let mut watchers = Vec::new();
    loop {
        let index = run.next.fetch_add(1, Ordering::Relaxed);
        if index >= settings.transactions {
            return Ok(watchers);
        }
        let caller = &callers[index % callers.len()];
        let due = run.due(index, settings.rate);
        tokio::time::sleep_until(due.into()).await;
        let response = client
            .post(format!("{url}/transaction"))
            .bearer_auth(&caller.token)
            .json(&transaction_body(index))
            .send()
            .await?;
        if response.status().as_u16() != 202 {
            tally.lock().await.refused += 1;
            continue;
        }
        let body: Value = response.json().await?;
        tally.lock().await.accepted += 1;
        if !index.is_multiple_of(settings.sample_every.max(1)) {
            continue;
        }
        let Ok(permit) = run.samplers.clone().try_acquire_owned() else {
            tally.lock().await.skipped_samples += 1;
            continue;
        };
        let id = body["transactionId"]
            .as_str()
            .context("no transaction id")?
            .to_owned();
        let (client, url, caller, tally) = (
            client.clone(),
            url.to_owned(),
            caller.clone(),
            tally.clone(),
        );
        watchers.push(tokio::spawn(async move {
            let latency = wait_final(&client, &url, &caller, &id, due).await?;
            drop(permit);
            let latency_ms = latency.as_secs_f64() * 1e3;
            tally.lock().await.latencies_ms.push(latency_ms);
            Ok(())
        }));
    }
}

async fn wait_final(
    client: &Client,
    url: &str,
    caller: &Caller,
    transaction_id: &str,
    submitted: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let response = client
            .get(format!("{url}/transaction/{transaction_id}"))
            .bearer_auth(&caller.token)
            .send()
            .await?;
        let body: Value = response.json().await?;
        match body["transactionStatus"].as_str() {
            Some("SUCCESSFUL") => return Ok(submitted.elapsed()),
            Some("FAILED") => bail!("transaction {transaction_id} failed: {body}"),
            _ if submitted.elapsed() > SETTLE_WAIT => bail!("{transaction_id} never became final"),
            _ => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Waits until every balance is exactly what the accepted requests imply.
async fn settle(
    client: &Client,
    url: &str,
    callers: &[Caller],
    transactions: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_WAIT;
    for (position, caller) in callers.iter().enumerate() {
        let expected = expected_balance(position, callers.len(), transactions)?;
        loop {
            let response = client
                .get(format!("{url}/account/balance/{}", caller.uid))
                .bearer_auth(&caller.token)
                .send()
                .await?;
            let balance: Value = response.json().await?;
            let actual: Decimal = balance["accountBalance"].as_str().unwrap_or("0").parse()?;
            let held = balance["heldBalance"]
                .as_str()
                .unwrap_or("0")
                .parse::<Decimal>()?;
            if actual == expected && held.is_zero() {
                break;
            }
            if Instant::now() > deadline {
                bail!("account {} holds {actual}, expected {expected}", caller.uid);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

fn expected_balance(
    position: usize,
    accounts: usize,
    transactions: usize,
) -> anyhow::Result<Decimal> {
    let (mut adds, mut airtime) = (0i64, 0i64);
    for index in (position..transactions).step_by(accounts) {
        if index.is_multiple_of(2) {
            adds += 1
        } else {
            airtime += 1
        }
    }
    let funding: Decimal = FUNDING.parse()?;
    let add: Decimal = ADD_AMOUNT.parse()?;
    let spend: Decimal = AIRTIME_AMOUNT.parse()?;
    Ok(funding + add * Decimal::from(adds) - spend * Decimal::from(airtime))
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(tally: &Tally, submitted: Duration, settled: Duration) {
    let mut latencies = tally.latencies_ms.clone();
    latencies.sort_by(f64::total_cmp);
    let rate = |count: usize, elapsed: Duration| count as f64 / elapsed.as_secs_f64().max(1e-9);
    println!("accepted transactions        {}", tally.accepted);
    println!("refused transactions         {}", tally.refused);
    println!(
        "accepted rate                {:.0} tx/s",
        rate(tally.accepted, submitted)
    );
    println!(
        "final rate (all settled)     {:.0} tx/s",
        rate(tally.accepted, settled)
    );
    println!(
        "submit-to-final latency, ms  p50 {:.1}  p99 {:.1}  max {:.1}  ({} sampled)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        latencies.len()
    );
    if tally.skipped_samples > 0 {
        println!(
            "samples skipped              {} (every watcher busy)",
            tally.skipped_samples
        );
    }
    println!("balances                     every account exact, no funds held");
}
