//! Start-up and shutdown: builds every role from [`Settings`] and runs them in one process.
//!
//! `tally up` is this module. The API, the decider, the projector, the processor and the
//! notifier run as tasks over one embedded log and one read store. On shutdown the API stops
//! taking requests and finishes the ones in flight, then each worker commits its current batch
//! and stops, so nothing the API accepted is lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use secrecy::{ExposeSecret, SecretString};
use tally_commands::decider::{self, DeciderSettings};
use tally_commands::log::kafka::{KafkaLog, KafkaLogSettings};
use tally_commands::log::sqlite::{SqliteLog, SqliteLogReader, SqliteLogSettings};
use tally_commands::log::{EventLog, LogError};
use tally_processor::ProcessorSettings;
use tally_processor::airtime::{AirtimeProvider, HttpProvider, HttpProviderSettings, Simulator};
use tally_projections::compare::{self, Comparison};
use tally_projections::swap::{self, Swapped};
use tally_projections::verify::{self, VerifyReport, VerifySettings};
use tally_projections::{ProjectorSettings, ReadStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::auth::{self, AuthSettings, AuthState, JwtKeys, Role};
use crate::routes;
use crate::senders;
use crate::settings::{AirtimeProviderKind, ReadStoreLocation, Settings};
use crate::state::AppState;

/// Which roles a process runs. `tally up` runs them all; on a cluster each runs alone and
/// scales by instances (the API) or by partitions (the workers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub decider: bool,
    pub projector: bool,
    pub processor: bool,
    pub notifier: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        decider: true,
        projector: true,
        processor: true,
        notifier: true,
    };
    pub const NONE: Roles = Roles {
        api: false,
        decider: false,
        projector: false,
        processor: false,
        notifier: false,
    };
}

/// A running Tally: its API address, when it serves the API, and the handle that stops it.
pub struct RunningApp {
    pub address: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl RunningApp {
    /// Asks every role to stop and waits until each has committed and stopped.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits for the roles; the first failure stops the others.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let result = joined.context("a role panicked").and_then(|result| result);
            if let Err(error) = result {
                error!(
                    error = format!("{error:#}"),
                    "role failed; stopping the others"
                );
                let _ = self.shutdown.send(true);
                outcome = outcome.and(Err(error));
            }
        }
        outcome
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Opens the stores, starts the given roles, and returns once the API, if it is one of them,
/// listens.
pub async fn start(settings: Settings, roles: Roles) -> anyhow::Result<RunningApp> {
    // Checked before anything is created on disk, so a typo leaves no half-made data directory.
    let auth_settings = AuthSettings::new(settings.bcrypt_cost, settings.token_lifetime_s)
        .context("invalid auth settings")?;
    let (log, store) = open_stores(&settings, LogUse::Write).await?;
    let auth = auth_state(&settings, auth_settings, &store)?;
    bootstrap_admin(&settings, &auth).await?;

    let (shutdown, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    spawn_workers(&mut tasks, roles, &settings, &log, &store, &stopping)?;
    let address = match roles.api {
        true => Some(
            spawn_api(
                &mut tasks,
                &settings,
                AppState::new(auth, log, store),
                stopping,
            )
            .await?,
        ),
        false => None,
    };
    info!(?address, ?roles, data_dir = %settings.data_dir.display(), "tally is up");
    Ok(RunningApp {
        address,
        shutdown,
        tasks,
    })
}

/// What `tally replay` measured, and what it found when told to compare.
#[derive(Clone, Debug)]
pub struct ReplayReport {
    pub replayed: tally_projections::Replayed,
    pub elapsed: std::time::Duration,
    /// The rebuilt tables against the live store's, when `--compare-with` named one.
    pub comparison: Option<Comparison>,
    /// What the swap did, when `--swap` asked to put the rebuilt tables in place of the live
    /// ones.
    pub swapped: Option<Swapped>,
}

/// What `tally replay` is asked to do beyond rebuilding the tables.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Go on with a replay cut short instead of refusing a store with projected rows.
    pub resume: bool,
    /// The URL of a live store to compare the rebuilt tables with.
    pub compare_with: Option<SecretString>,
    /// Put the rebuilt tables in place of the live ones after comparing them.
    pub swap: bool,
}

/// Rebuilds the read tables in the store `settings` name from the log, then returns. Meant
/// for an empty database (an audit, a new read replica, a schema change): one that already
/// holds projected rows is refused unless `resume` says a replay was cut short there. A store
/// that a live projector writes must never be replayed into. An embedded log a running Tally
/// holds is read beside it.
///
/// With `compare_with`, the URL of a live store, the replay first stops where that store's
/// projection stood when the replay began (read from one snapshot of it, so a projector
/// writing there meanwhile does not matter), compares the two stores row by row, and then
/// goes on to the end of the log. With `swap` as well, the rebuilt tables then take the place
/// of the live store's while Tally runs on (see [`swap::swap`]).
pub async fn replay(settings: Settings, options: ReplayOptions) -> anyhow::Result<ReplayReport> {
    let ReplayOptions {
        resume,
        compare_with,
        swap,
    } = options;
    anyhow::ensure!(
        !swap || compare_with.is_some(),
        "--swap needs --compare-with to name the live store"
    );
    if let Some(live_url) = &compare_with {
        let rebuilt_url = settings
            .database_url
            .as_ref()
            .map(|url| url.expose_secret());
        anyhow::ensure!(
            rebuilt_url != Some(live_url.expose_secret()),
            "--database-url names the live store given to --compare-with: replay rebuilds \
             into another, empty database"
        );
    }
    // Opened before the rebuilt store is created, so a mistyped one leaves nothing behind.
    let compared_with = match &compare_with {
        Some(url) => Some(
            ReadStore::open_read_only(url.expose_secret())
                .await
                .context("cannot open the store named by --compare-with")?,
        ),
        None => None,
    };
    let (log, store) = open_stores(&settings, LogUse::Read).await?;
    let applied = store
        .offsets()
        .await
        .context("cannot read the projection offsets")?;
    if !applied.is_empty() && !resume {
        anyhow::bail!(
            "the read store already holds projected rows ({} partitions applied): replay \
             rebuilds an empty database; give --resume to go on with a replay cut short",
            applied.len()
        );
    }
    // The live store to swap into is checked before the replay, which may take long.
    let swap_into = match (swap, &compare_with) {
        (true, Some(url)) => {
            let live = ReadStore::open(url.expose_secret())
                .await
                .context("cannot open the live store named by --compare-with to swap")?;
            swap::check_targets(&live, &store)
                .await
                .context("cannot swap the rebuilt tables into the live store")?;
            Some(live)
        }
        _ => None,
    };
    let started = std::time::Instant::now();
    let projector = ProjectorSettings::default();
    let (mut replayed, comparison) = match compared_with {
        Some(live) => {
            let compared = replay_and_compare(log.as_ref(), &store, &projector, &live).await;
            live.close().await;
            let (replayed, comparison) = compared?;
            (replayed, Some(comparison))
        }
        None => (tally_projections::Replayed::default(), None),
    };
    let bar = ReplayBar::new("to the end of the log");
    let rest = tally_projections::replay(log.as_ref(), &store, &projector, &bar.report())
        .await
        .context("replay failed")?;
    bar.finish();
    replayed.records += rest.records;
    replayed.batches += rest.batches;
    let elapsed = started.elapsed();
    let swapped = match swap_into {
        Some(live) => {
            let swapped = swap::swap(log.as_ref(), &live, &store, &projector)
                .await
                .context("the swap failed; the live tables are as they were")?;
            live.close().await;
            Some(swapped)
        }
        None => None,
    };
    store.close().await;
    Ok(ReplayReport {
        replayed,
        elapsed,
        comparison,
        swapped,
    })
}

/// The progress bar of a replay on standard error: offsets done of the total, records
/// applied, the rate, and the time left. It is drawn only on a terminal; elsewhere (a log
/// file, CI) the summary `tally replay` prints at the end says the same.
struct ReplayBar {
    bar: indicatif::ProgressBar,
}

impl ReplayBar {
    fn new(stage: &'static str) -> ReplayBar {
        let bar = indicatif::ProgressBar::with_draw_target(
            None,
            indicatif::ProgressDrawTarget::stderr_with_hz(4),
        );
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {percent:>3}%  {msg} records  {per_sec}  {eta} left",
        );
        // The template is a constant known to parse; the default style is a fine fallback.
        if let Ok(style) = style {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("replay {stage}"));
        ReplayBar { bar }
    }

    /// What the replay calls after each batch.
    fn report(&self) -> impl Fn(tally_projections::ReplayProgress) + Send + Sync + '_ {
        |progress| {
            self.bar.set_length(progress.offsets_total);
            self.bar.set_position(progress.offsets_done);
            self.bar.set_message(progress.records.to_string());
        }
    }

    fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// Replays up to where the live store at `live_url` stands and compares the two.
async fn replay_and_compare(
    log: &dyn EventLog,
    store: &ReadStore,
    projector: &ProjectorSettings,
    live: &ReadStore,
) -> anyhow::Result<(tally_projections::Replayed, Comparison)> {
    let mut live_snapshot = live
        .snapshot()
        .await
        .context("cannot read the live store")?;
    let cut = (live_snapshot.offsets().await).context("cannot read the live store's offsets")?;
    let bar = ReplayBar::new("up to the live store");
    let replayed = tally_projections::replay_until(log, store, projector, &cut, &bar.report())
        .await
        .context("replay failed")?;
    bar.finish();
    let mut replayed_snapshot = store.snapshot().await.context("cannot read the replay")?;
    let comparison = compare::compare(&mut live_snapshot, &mut replayed_snapshot)
        .await
        .context("cannot compare the stores")?;
    // Ended at once: a swap that follows renames the tables they read.
    let closed = live_snapshot
        .close()
        .await
        .and(replayed_snapshot.close().await);
    closed.context("cannot end the read snapshots")?;
    Ok((replayed, comparison))
}

/// Audits the Tally `settings` name: its log against itself and against its read store,
/// which is replayed into a scratch SQLite file in the system's temporary directory. Writes
/// to neither, and an embedded log a running Tally holds is read beside it.
pub async fn verify(settings: Settings, pending_limit: Duration) -> anyhow::Result<VerifyReport> {
    let read_store = settings.read_store().context("invalid --database-url")?;
    let log = open_existing_log(&settings).await?;
    let live = match &read_store {
        ReadStoreLocation::Url(url) => ReadStore::open_read_only(url.expose_secret()).await,
        ReadStoreLocation::DataDir(path) => {
            anyhow::ensure!(path.is_file(), "no read store at {}", path.display());
            ReadStore::open_read_only(&path.display().to_string()).await
        }
    }
    .context("cannot open the read store to read it")?;
    let scratch_dir = tempfile::tempdir().context("cannot make a scratch directory")?;
    let scratch = ReadStore::open_sqlite(&scratch_dir.path().join("replay.db"))
        .await
        .context("cannot open the scratch store")?;
    let verify_settings = VerifySettings {
        pending_limit_ms: i64::try_from(pending_limit.as_millis()).unwrap_or(i64::MAX),
        now: chrono::Utc::now(),
        projector: ProjectorSettings::default(),
    };
    let report = verify::verify(log.as_ref(), &live, &scratch, &verify_settings)
        .await
        .context("the audit could not read the log or a store")?;
    scratch.close().await;
    live.close().await;
    Ok(report)
}

/// Opens the log `settings` name to read it, refusing to create an embedded one where none
/// is: an audit or a replay of an empty directory is a mistyped path, not an empty ledger. An
/// embedded log that a running Tally holds is opened read-only beside it, so a replay or an
/// audit need not stop it.
async fn open_existing_log(settings: &Settings) -> anyhow::Result<Arc<dyn EventLog>> {
    if settings.kafka.brokers.is_some() {
        return open_log(settings).await;
    }
    let log_file = settings.data_dir.join("log.db");
    anyhow::ensure!(
        log_file.is_file(),
        "no event log at {}: give the --data-dir of the Tally whose log to read",
        log_file.display()
    );
    match SqliteLog::open(embedded_log_settings(settings)).await {
        Ok(log) => Ok(log),
        Err(LogError::Locked(_)) => {
            let log = SqliteLogReader::open(&settings.data_dir)
                .await
                .context("cannot open the event log to read it")?;
            Ok(log)
        }
        Err(error) => Err(error).context("cannot open the event log"),
    }
}

/// Whether a process opens the log to write to it, as Tally's roles do, or only to read it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogUse {
    Write,
    Read,
}

/// Opens the log and the read store the settings name, creating the data directory first.
/// The read store's URL is checked before anything is created on disk.
async fn open_stores(
    settings: &Settings,
    usage: LogUse,
) -> anyhow::Result<(Arc<dyn EventLog>, ReadStore)> {
    let read_store = settings.read_store().context("invalid --database-url")?;
    let log = match usage {
        LogUse::Write => {
            std::fs::create_dir_all(&settings.data_dir).with_context(|| {
                format!(
                    "cannot create data directory {}",
                    settings.data_dir.display()
                )
            })?;
            open_log(settings).await?
        }
        LogUse::Read => open_existing_log(settings).await?,
    };
    let store = (read_store.open().await).context("cannot open the read store")?;
    Ok((log, store))
}

async fn spawn_api(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    settings: &Settings,
    state: AppState,
    stopping: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let address = listener.local_addr().context("listener has no address")?;
    tasks.spawn(serve(listener, routes::router(state), stopping));
    Ok(address)
}

async fn open_log(settings: &Settings) -> anyhow::Result<Arc<dyn EventLog>> {
    let kafka = &settings.kafka;
    if let Some(brokers) = &kafka.brokers {
        let mut log_settings = KafkaLogSettings::new(brokers, settings.partitions);
        log_settings.topic_prefix = kafka.topic_prefix.clone();
        log_settings.transactional_id_prefix = format!("{}tally-", kafka.topic_prefix);
        log_settings.replication_factor = kafka.replication_factor;
        log_settings.properties = kafka.properties.clone();
        log_settings.instance_id = kafka.instance_id.clone();
        log_settings.timeouts.session_timeout_ms = kafka.session_timeout_ms;
        // Three heartbeats per session, as Kafka advises.
        log_settings.timeouts.heartbeat_interval_ms = kafka.session_timeout_ms / 3;
        let log = KafkaLog::open(log_settings)
            .await
            .context("cannot open the Kafka log")?;
        return Ok(log);
    }
    // A process killed just before this one started may still hold the lock for a moment
    // while the kernel closes its files; a live one holds it for good, and is reported.
    let waiting_since = std::time::Instant::now();
    loop {
        match SqliteLog::open(embedded_log_settings(settings)).await {
            Ok(log) => return Ok(log),
            Err(LogError::Locked(_)) if waiting_since.elapsed() < LOG_LOCK_WAIT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error).context("cannot open the event log"),
        }
    }
}

/// How long opening the embedded log to write waits for a lock another process holds.
const LOG_LOCK_WAIT: Duration = Duration::from_secs(5);

fn embedded_log_settings(settings: &Settings) -> SqliteLogSettings {
    let mut log_settings = SqliteLogSettings::new(&settings.data_dir, settings.partitions);
    log_settings.synchronous_full = settings.log_sync_full;
    log_settings
}

fn auth_state(
    settings: &Settings,
    auth_settings: AuthSettings,
    store: &ReadStore,
) -> anyhow::Result<AuthState> {
    let jwt = match &settings.jwt_secret {
        Some(secret) => JwtKeys::from_secret(secret),
        None => JwtKeys::load_or_create(&settings.data_dir),
    }
    .context("cannot load the token secret")?;
    Ok(AuthState {
        store: store.clone(),
        jwt: Arc::new(jwt),
        settings: auth_settings,
    })
}

/// Creates the configured administrator once; an existing one is left as it is.
async fn bootstrap_admin(settings: &Settings, auth: &AuthState) -> anyhow::Result<()> {
    let bootstrap = &settings.bootstrap;
    let (username, password) = match (&bootstrap.admin_username, &bootstrap.admin_password) {
        (Some(username), Some(password)) => (username, password),
        (None, None) => return Ok(()),
        _ => anyhow::bail!(
            "TALLY_ADMIN_USERNAME and TALLY_ADMIN_PASSWORD (--admin-username, --admin-password) \
             are given together or not at all"
        ),
    };
    let roles = [Role::Admin];
    match auth::create_user(&auth.store, &auth.settings, username, password, &roles).await {
        Ok(uid) => info!(%uid, "administrator created"),
        Err(error) if error.code() == "username_taken" => {
            check_existing_admin(auth, username, password).await?;
        }
        Err(error) => return Err(anyhow::anyhow!("cannot create the administrator: {error}")),
    }
    Ok(())
}

/// The bootstrap administrator exists already: it is left as it is, but a role or password
/// other than the settings say is reported, since whoever set them expects to log in with them.
async fn check_existing_admin(
    auth: &AuthState,
    username: &str,
    password: &SecretString,
) -> anyhow::Result<()> {
    let name = auth::username::Username::parse(username)
        .map_err(|error| anyhow::anyhow!("invalid administrator username: {error}"))?;
    let found = auth::store::find_user(&auth.store, &name)
        .await
        .map_err(|error| anyhow::anyhow!("cannot read the administrator: {error}"))?;
    let Some(user) = found else {
        return Ok(());
    };
    if !user.roles.contains(&Role::Admin) {
        tracing::warn!(
            username,
            "the bootstrap administrator's username belongs to a user without the admin role; \
             it is left as it is"
        );
        return Ok(());
    }
    let cost = auth.settings.bcrypt_cost();
    let matches = auth::password::verify(password, Some(user.password_hash), cost)
        .await
        .map_err(|error| anyhow::anyhow!("cannot check the administrator's password: {error}"))?;
    if !matches {
        tracing::warn!(
            username,
            "TALLY_ADMIN_PASSWORD is not the administrator's password, which is left as it is"
        );
    }
    Ok(())
}

fn spawn_workers(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    roles: Roles,
    settings: &Settings,
    log: &Arc<dyn EventLog>,
    store: &ReadStore,
    stopping: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if roles.decider {
        let decider = decider::run(log.clone(), DeciderSettings::default(), stopping.clone());
        tasks.spawn(async move { decider.await.context("decider failed") });
    }
    if roles.projector {
        let settings = ProjectorSettings::default();
        let projector =
            tally_projections::run(log.clone(), store.clone(), settings, stopping.clone());
        tasks.spawn(async move { projector.await.context("projector failed") });
    }
    if roles.processor {
        let provider = airtime_provider(settings)?;
        let settings = ProcessorSettings::default();
        let processor = tally_processor::run(log.clone(), provider, settings, stopping.clone());
        tasks.spawn(async move { processor.await.context("processor failed") });
    }
    if roles.notifier {
        let notifier = Arc::new(senders::notifier(&settings.notify)?);
        let notifier_settings = senders::notifier_settings(&settings.notify)?;
        let notifier = tally_processor::notifier::run(
            log.clone(),
            store.clone(),
            notifier,
            notifier_settings,
            stopping.clone(),
        );
        tasks.spawn(async move { notifier.await.context("notifier failed") });
    }
    Ok(())
}

fn airtime_provider(settings: &Settings) -> anyhow::Result<Arc<dyn AirtimeProvider>> {
    let airtime = &settings.airtime;
    match airtime.provider {
        AirtimeProviderKind::Simulator => Ok(Arc::new(Simulator)),
        AirtimeProviderKind::Http => {
            let base_url = airtime.url.clone().context("--airtime-url is required")?;
            let api_key = airtime
                .api_key
                .clone()
                .context("--airtime-api-key is required")?;
            let provider_settings = HttpProviderSettings {
                base_url,
                api_key,
                timeout_ms: airtime.timeout_ms,
            };
            let provider = HttpProvider::new(provider_settings).context("bad airtime settings")?;
            Ok(Arc::new(provider))
        }
    }
}

/// How long a client may take to send a request's headers. A client slower than that is
/// either broken or holding connections open on purpose; either way it is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight before it closes their connections. Long
/// enough for any request the API serves; a stalled client cannot hold the process open.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Serves HTTP until `stopping` turns true, then finishes the requests in flight, giving up
/// on them after [`DRAIN_TIMEOUT`].
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    mut stopping: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = ConnectionBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // Endless on purpose: accepts connections until shutdown is asked for.
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(error = %error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(connection);
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            timeout_ms = DRAIN_TIMEOUT.as_millis() as u64,
            "requests still open at the drain deadline"
        );
    }
    Ok(())
}
