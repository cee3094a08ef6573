//! A harness that runs the real `tally` binary and drives it over HTTP, as a user would.
//!
//! Each [`TestApp`] gets its own data directory and a free port on 127.0.0.1, so tests run in
//! parallel without sharing anything. It runs on either backend: the embedded default, or a
//! real Kafka broker and MariaDB (`TALLY_KAFKA_BROKERS` and `TALLY_TEST_MYSQL_URL`, as
//! `deploy/infra.sh env` prints them), with its own topic prefix and a fresh database. The
//! binary is the one cargo built next to the tests (or the one `TALLY_BIN` names).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{Value, json};
use sqlx::Connection;
use tempfile::TempDir;

/// How long a fresh process may take to answer `/health`.
const START_WAIT: Duration = Duration::from_secs(60);
/// How long a transaction may take to reach a final status in a test.
pub const FINAL_WAIT: Duration = Duration::from_secs(60);

pub struct TestApp {
    pub base_url: String,
    pub client: Client,
    pub data_dir: TempDir,
    pub backend: Backend,
    port: u16,
    backend_args: Vec<String>,
    /// Flags of the test's own, given on every start after the backend's.
    extra_args: Vec<String>,
    /// Held so that the database lives as long as the app and is dropped after it.
    _database: Option<MysqlDatabase>,
    process: Option<Child>,
}

/// Where a test app keeps its log and read store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite files in the data directory.
    Embedded,
    /// A Kafka broker and a MariaDB server on 127.0.0.1.
    KafkaMysql,
}

/// Runs an async test body once per backend, as two tests named after it.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn embedded() -> anyhow::Result<()> {
                    super::$name($crate::Backend::Embedded).await
                }

                #[tokio::test]
                async fn kafka_mysql() -> anyhow::Result<()> {
                    super::$name($crate::Backend::KafkaMysql).await
                }
            }
        )+
    };
}

/// How long a killed Kafka member stays in its group before its partitions move: short, so
/// restart tests do not wait out the production default.
const KAFKA_SESSION_TIMEOUT_MS: &str = "6000";

/// A database of its own for one test app on the MariaDB server, dropped with it.
struct MysqlDatabase {
    server_url: String,
    name: String,
}

fn mysql_server_url() -> Result<String> {
    std::env::var("TALLY_TEST_MYSQL_URL").context(
        "TALLY_TEST_MYSQL_URL is unset: start MariaDB with deploy/infra.sh up and \
         eval \"$(deploy/infra.sh env)\"",
    )
}

/// A store made for one test's replay; see [`TestApp::scratch_store`].
pub struct ScratchStore {
    pub url: String,
    _kept: Scratch,
}

/// What a scratch store holds on to until it is dropped.
enum Scratch {
    Directory { _directory: TempDir },
    Database { _database: MysqlDatabase },
}

impl MysqlDatabase {
    /// A new database on the server `server_url` names; its parameters (TLS settings, say)
    /// hold for every connection to it, the app's and the drop's included.
    async fn create(server_url: String) -> Result<MysqlDatabase> {
        let name = format!("tally_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::MySqlConnection::connect(&server_url).await?;
        let create = sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"));
        sqlx::query(create).execute(&mut connection).await?;
        Ok(MysqlDatabase { server_url, name })
    }

    fn url(&self) -> String {
        let (server, parameters) = match self.server_url.split_once('?') {
            Some((server, parameters)) => (server, Some(parameters)),
            None => (self.server_url.as_str(), None),
        };
        let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
        match parameters {
            Some(parameters) => format!("{base}/{}?{parameters}", self.name),
            None => format!("{base}/{}", self.name),
        }
    }
}

impl Drop for MysqlDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.server_url.clone(), self.name.clone());
        // Drop runs outside any runtime the test may still have; a thread of its own keeps it
        // independent of that.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut connection = sqlx::MySqlConnection::connect(&url).await?;
                let drop = sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"));
                sqlx::query(drop).execute(&mut connection).await?;
                anyhow::Ok(())
            })
        });
        let _ = dropped.join();
    }
}

/// A signed-up user with a token.
#[derive(Clone, Debug)]
pub struct User {
    pub uid: String,
    pub token: String,
}

/// The `tally` binary the tests run.
pub fn tally_bin() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("TALLY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("no current exe")?;
    let target_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("no target dir")?;
    let bin = target_dir.join("tally");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --bin tally` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// Flags that put a test app on the Kafka broker and a fresh MariaDB database.
async fn kafka_mysql_args() -> Result<(Vec<String>, Option<MysqlDatabase>)> {
    let brokers = std::env::var("TALLY_KAFKA_BROKERS").context(
        "TALLY_KAFKA_BROKERS is unset: start Kafka with deploy/infra.sh up and \
         eval \"$(deploy/infra.sh env)\"",
    )?;
    let database = MysqlDatabase::create(mysql_server_url()?).await?;
    let prefix = format!("e2e-{}-", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let args = vec![
        "--kafka-brokers".to_owned(),
        brokers,
        "--kafka-topic-prefix".to_owned(),
        prefix,
        "--kafka-session-timeout-ms".to_owned(),
        KAFKA_SESSION_TIMEOUT_MS.to_owned(),
        "--database-url".to_owned(),
        database.url(),
    ];
    Ok((args, Some(database)))
}

const TLS_RESTART_HINT: &str = "servers started by an older deploy/infra.sh have no TLS: \
                                restart them with deploy/infra.sh down, then deploy/infra.sh up";

/// Flags that put a test app on the broker's TLS listener and a fresh MariaDB database over
/// TLS, both verified against the private CA: `TALLY_KAFKA_TLS_BROKERS` and
/// `TALLY_TEST_TLS_CA`, as `deploy/infra.sh env` prints them.
async fn kafka_mysql_tls_args() -> Result<(Vec<String>, Option<MysqlDatabase>)> {
    let unset = |name: &str| {
        format!(
            "{name} is unset: start Kafka and MariaDB with deploy/infra.sh up and \
             eval \"$(deploy/infra.sh env)\""
        )
    };
    let brokers = std::env::var("TALLY_KAFKA_TLS_BROKERS")
        .with_context(|| unset("TALLY_KAFKA_TLS_BROKERS"))?;
    let ca = std::env::var("TALLY_TEST_TLS_CA").with_context(|| unset("TALLY_TEST_TLS_CA"))?;
    anyhow::ensure!(
        std::path::Path::new(&ca).is_file(),
        "TALLY_TEST_TLS_CA={ca} is not a file: deploy/infra.sh up makes it"
    );
    let first = brokers.split(',').next().unwrap_or_default().trim();
    std::net::TcpStream::connect(first).with_context(|| {
        format!("nothing listens at TALLY_KAFKA_TLS_BROKERS={brokers}; {TLS_RESTART_HINT}")
    })?;
    let server_url = mysql_server_url()?;
    let mut server = sqlx::MySqlConnection::connect(&server_url).await?;
    let have_ssl: String = sqlx::query_scalar("SELECT @@have_ssl")
        .fetch_one(&mut server)
        .await?;
    anyhow::ensure!(
        have_ssl == "YES",
        "MariaDB at TALLY_TEST_MYSQL_URL does not accept TLS; {TLS_RESTART_HINT}"
    );
    let separator = if server_url.contains('?') { '&' } else { '?' };
    let ca_parameter: String = ca
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect();
    let tls_url = format!("{server_url}{separator}ssl-mode=verify_identity&ssl-ca={ca_parameter}");
    let database = MysqlDatabase::create(tls_url).await?;
    let prefix = format!(
        "e2e-tls-{}-",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let args = vec![
        "--kafka-brokers".to_owned(),
        brokers,
        "--kafka-property".to_owned(),
        "security.protocol=SSL".to_owned(),
        "--kafka-property".to_owned(),
        format!("ssl.ca.location={ca}"),
        "--kafka-topic-prefix".to_owned(),
        prefix,
        "--kafka-session-timeout-ms".to_owned(),
        KAFKA_SESSION_TIMEOUT_MS.to_owned(),
        "--database-url".to_owned(),
        database.url(),
    ];
    Ok((args, Some(database)))
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl TestApp {
    /// Starts Tally on the embedded default with a fresh data directory.
    pub async fn spawn() -> Result<TestApp> {
        TestApp::spawn_on(Backend::Embedded).await
    }

    /// Starts Tally on `backend`, fresh, and waits until it answers.
    pub async fn spawn_on(backend: Backend) -> Result<TestApp> {
        TestApp::spawn_with(backend, &[]).await
    }

    /// Starts Tally on Kafka and MariaDB, talking TLS to both and verifying their
    /// certificates against the private CA `deploy/infra.sh` made.
    pub async fn spawn_over_tls() -> Result<TestApp> {
        let (args, database) = kafka_mysql_tls_args().await?;
        TestApp::spawn_from(Backend::KafkaMysql, (args, database), &[]).await
    }

    /// Starts Tally on `backend` with flags of the test's own (`--smtp-host`, say), kept for
    /// every restart.
    pub async fn spawn_with(backend: Backend, extra_args: &[String]) -> Result<TestApp> {
        let backend_args = match backend {
            Backend::Embedded => (Vec::new(), None),
            Backend::KafkaMysql => kafka_mysql_args().await?,
        };
        TestApp::spawn_from(backend, backend_args, extra_args).await
    }

    async fn spawn_from(
        backend: Backend,
        (mut backend_args, database): (Vec<String>, Option<MysqlDatabase>),
        extra_args: &[String],
    ) -> Result<TestApp> {
        let data_dir = tempfile::tempdir()?;
        let port = free_port()?;
        let client = Client::builder().timeout(Duration::from_secs(30)).build()?;
        let base_url = format!("http://127.0.0.1:{port}");
        if backend == Backend::KafkaMysql {
            // The same name on every restart, as a production process would have.
            backend_args.extend(["--kafka-instance-id".to_owned(), "up".to_owned()]);
        }
        let mut app = TestApp {
            base_url,
            client,
            data_dir,
            backend,
            port,
            backend_args,
            extra_args: extra_args.to_vec(),
            _database: database,
            process: None,
        };
        app.start().await?;
        Ok(app)
    }

    /// Starts the process again on the same data directory and port.
    pub async fn start(&mut self) -> Result<()> {
        let child = Command::new(tally_bin()?)
            .args([
                "up",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--bcrypt-cost",
                "10",
            ])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.backend_args)
            .args(&self.extra_args)
            .env_remove("TALLY_KAFKA_BROKERS")
            .env_remove("TALLY_DATABASE_URL")
            .env("TALLY_LOG", role_log_filter())
            .env("TALLY_ADMIN_USERNAME", "admin")
            .env("TALLY_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(app_log_destination())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start tally")?;
        self.process = Some(child);
        self.wait_until_healthy().await
    }

    async fn wait_until_healthy(&mut self) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < START_WAIT {
            if let Some(child) = self.process.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("tally exited during start-up: {status}");
            }
            let health = self
                .client
                .get(format!("{}/health", self.base_url))
                .send()
                .await;
            if health.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("tally did not become healthy within {START_WAIT:?}")
    }

    /// Runs one SQL statement on the app's read store (`read.db` in its data directory, or
    /// its MariaDB database) and returns the rows it changed: for tests that set up a state
    /// only a crash at an exact moment would otherwise leave behind.
    pub async fn execute_on_read_store(&self, sql: &str) -> Result<u64> {
        let statement = sqlx::AssertSqlSafe(sql.to_owned());
        let changed = match &self._database {
            Some(database) => {
                let mut connection = sqlx::MySqlConnection::connect(&database.url()).await?;
                sqlx::query(statement)
                    .execute(&mut connection)
                    .await?
                    .rows_affected()
            }
            None => {
                let path = self.data_dir.path().join("read.db");
                let url = format!("sqlite://{}", path.display());
                let mut connection = sqlx::SqliteConnection::connect(&url).await?;
                sqlx::query(statement)
                    .execute(&mut connection)
                    .await?
                    .rows_affected()
            }
        };
        Ok(changed)
    }

    /// The rows `sql` selects from the app's read store, every column read as text: the query
    /// casts what is not text (`CAST(x AS CHAR)` works on both backends).
    pub async fn read_store_rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        use sqlx::Row;
        let statement = sqlx::AssertSqlSafe(sql.to_owned());
        let text = |row: &dyn Fn(usize) -> Result<Option<String>, sqlx::Error>, width: usize| {
            (0..width).map(row).collect::<Result<Vec<_>, _>>()
        };
        let mut rows = Vec::new();
        match &self._database {
            Some(database) => {
                let mut connection = sqlx::MySqlConnection::connect(&database.url()).await?;
                for row in sqlx::query(statement).fetch_all(&mut connection).await? {
                    rows.push(text(&|index| row.try_get(index), row.len())?);
                }
            }
            None => {
                let path = self.data_dir.path().join("read.db");
                let url = format!("sqlite://{}", path.display());
                let mut connection = sqlx::SqliteConnection::connect(&url).await?;
                for row in sqlx::query(statement).fetch_all(&mut connection).await? {
                    rows.push(text(&|index| row.try_get(index), row.len())?);
                }
            }
        }
        Ok(rows)
    }

    /// The flags that point another `tally` command (`tally export`) at this app's read
    /// store: its data directory, or its MariaDB database.
    pub fn read_store_args(&self) -> Vec<String> {
        match &self._database {
            Some(database) => vec!["--database-url".to_owned(), database.url()],
            None => vec![
                "--data-dir".to_owned(),
                self.data_dir.path().display().to_string(),
            ],
        }
    }

    /// Runs `tally <subcommand>` as an operator would beside this app: on its log and read
    /// store (the embedded ones in `data_dir`, or its topics and database), with `args` after
    /// them, and returns what it printed and how it exited.
    pub fn run_tally(
        &self,
        subcommand: &str,
        data_dir: &std::path::Path,
        args: &[&str],
    ) -> Result<std::process::Output> {
        self.run_tally_with(subcommand, data_dir, &self.backend_args, args)
    }

    /// Like [`TestApp::run_tally`], but on the read store at `database_url` in place of the
    /// app's: for `tally replay` into a fresh database.
    pub fn run_tally_on_database(
        &self,
        subcommand: &str,
        data_dir: &std::path::Path,
        database_url: &str,
        args: &[&str],
    ) -> Result<std::process::Output> {
        let mut backend_args = self.backend_args.clone();
        match backend_args.iter().position(|arg| arg == "--database-url") {
            Some(at) => backend_args[at + 1] = database_url.to_owned(),
            None => backend_args.extend(["--database-url".to_owned(), database_url.to_owned()]),
        }
        self.run_tally_with(subcommand, data_dir, &backend_args, args)
    }

    fn run_tally_with(
        &self,
        subcommand: &str,
        data_dir: &std::path::Path,
        backend_args: &[String],
        args: &[&str],
    ) -> Result<std::process::Output> {
        Command::new(tally_bin()?)
            .arg(subcommand)
            .arg("--data-dir")
            .arg(data_dir)
            .args(backend_args)
            .args(args)
            .env_remove("TALLY_KAFKA_BROKERS")
            .env_remove("TALLY_DATABASE_URL")
            .env("TALLY_LOG", "warn")
            .output()
            .with_context(|| format!("cannot run tally {subcommand}"))
    }

    /// The read store's database URL on Kafka and MariaDB; `None` on the embedded default.
    pub fn database_url(&self) -> Option<String> {
        self._database.as_ref().map(MysqlDatabase::url)
    }

    /// The URL of the app's live read store, as `--compare-with` takes it.
    pub fn live_store_url(&self) -> String {
        match self.database_url() {
            Some(url) => url,
            None => self.data_dir.path().join("read.db").display().to_string(),
        }
    }

    /// An empty store for `tally replay` to rebuild into: a SQLite file in a directory of its
    /// own, or a new database on the app's MariaDB server. Both go when it is dropped.
    pub async fn scratch_store(&self) -> Result<ScratchStore> {
        match &self._database {
            Some(database) => {
                let database = MysqlDatabase::create(database.server_url.clone()).await?;
                Ok(ScratchStore {
                    url: database.url(),
                    _kept: Scratch::Database {
                        _database: database,
                    },
                })
            }
            None => {
                let directory = tempfile::tempdir()?;
                Ok(ScratchStore {
                    url: directory.path().join("rebuilt.db").display().to_string(),
                    _kept: Scratch::Directory {
                        _directory: directory,
                    },
                })
            }
        }
    }

    /// Runs `tally replay` on the app's log into the store at `target_url`, with `args`, and
    /// returns its exit code (0 equal, 1 differing) and what it printed.
    pub fn replay_into(&self, target_url: &str, args: &[&str]) -> Result<(i32, String)> {
        let data_dir = self.data_dir.path();
        let output = self.run_tally_on_database("replay", data_dir, target_url, args)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let code = output.status.code().context("tally replay was killed")?;
        anyhow::ensure!(code != 2, "tally replay could not run: {stderr}");
        Ok((code, stdout))
    }

    /// Runs `tally replay` on the app's log into a fresh SQLite file, compared with the app's
    /// live read store, and returns its exit code (0 equal, 1 differing) and what it printed.
    pub fn replay_compared(&self) -> Result<(i32, String)> {
        let target = tempfile::tempdir()?;
        let target_url = target.path().join("rebuilt.db").display().to_string();
        let live_url = self.live_store_url();
        self.replay_into(&target_url, &["--compare-with", live_url.as_str()])
    }

    /// Kills the process with SIGKILL: no draining, no committing.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.process.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops the process with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.process.take().context("not running")?;
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        Ok(child.wait()?)
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn signup_and_login(&self, username: &str) -> Result<User> {
        let password = "correct horse battery staple";
        let body = json!({ "username": username, "password": password });
        let signup = self
            .request(Method::POST, "/signup/username", None)
            .json(&body)
            .send()
            .await?;
        expect_status(signup, 201).await?;
        self.login(username, password).await
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<User> {
        let body = json!({ "username": username, "password": password });
        let login = self
            .request(Method::POST, "/login", None)
            .json(&body)
            .send()
            .await?;
        let login = expect_status(login, 200).await?;
        let token = login["token"].as_str().context("no token")?.to_owned();
        let me = self
            .request(Method::GET, "/me", Some(&token))
            .send()
            .await?;
        let me = expect_status(me, 200).await?;
        Ok(User {
            uid: me["uid"].as_str().context("no uid")?.to_owned(),
            token,
        })
    }

    pub async fn admin(&self) -> Result<User> {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// Opens an account for `user` in `currency` and returns the account as answered.
    pub async fn open_account(&self, user: &User, currency: &str) -> Result<Value> {
        let body = json!({
            "accountInfo": { "name": "Ada Lovelace", "email": "ada@example.com",
                             "phoneNumber": "+14155552671" },
            "currencyCode": currency,
        });
        let path = format!("/account/{}", user.uid);
        let response = self
            .request(Method::POST, &path, Some(&user.token))
            .json(&body)
            .send()
            .await?;
        expect_status(response, 201).await
    }

    /// Submits a transaction and returns the 202 body.
    pub async fn submit(&self, user: &User, body: &Value) -> Result<Value> {
        let response = self
            .request(Method::POST, "/transaction", Some(&user.token))
            .json(body)
            .send()
            .await?;
        expect_status(response, 202).await
    }

    pub async fn transaction(&self, user: &User, transaction_id: &str) -> Result<Value> {
        let path = format!("/transaction/{transaction_id}");
        let response = self
            .request(Method::GET, &path, Some(&user.token))
            .send()
            .await?;
        expect_status(response, 200).await
    }

    /// Polls a transaction until its status is final.
    pub async fn wait_final(&self, user: &User, transaction_id: &str) -> Result<Value> {
        let started = Instant::now();
        loop {
            let transaction = self.transaction(user, transaction_id).await?;
            let status = transaction["transactionStatus"]
                .as_str()
                .unwrap_or_default();
            if status == "SUCCESSFUL" || status == "FAILED" {
                return Ok(transaction);
            }
            if started.elapsed() > FINAL_WAIT {
                bail!("transaction {transaction_id} still {status} after {FINAL_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn balance(&self, user: &User) -> Result<Value> {
        let path = format!("/account/balance/{}", user.uid);
        let response = self
            .request(Method::GET, &path, Some(&user.token))
            .send()
            .await?;
        expect_status(response, 200).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Runs SQL statements on the embedded log of the data directory `data_dir` (`log.db`), with
/// no Tally running there: for tests that tamper with the log as an intruder with the file
/// could.
pub async fn execute_on_log(data_dir: &std::path::Path, statements: &[String]) -> Result<()> {
    let url = format!("sqlite://{}", data_dir.join("log.db").display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await?;
    for statement in statements {
        let statement = sqlx::AssertSqlSafe(statement.clone());
        sqlx::query(statement).execute(&mut connection).await?;
    }
    connection.close().await?;
    Ok(())
}

/// Copies the files of a stopped app's data directory into a new temporary one.
pub fn copy_data_dir(data_dir: &std::path::Path) -> Result<TempDir> {
    let copy = tempfile::tempdir()?;
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name()))?;
        }
    }
    Ok(copy)
}

/// The administrator password every test app is started with.
pub const ADMIN_PASSWORD: &str = "an admin password for tests only";

/// Checks a response's status and returns its JSON body (null when empty).
pub async fn expect_status(response: Response, expected: u16) -> Result<Value> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    if status != expected {
        bail!("expected {expected}, got {status}: {text}");
    }
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("body is not JSON: {text}"))
}

pub fn add_money(amount: &str) -> Value {
    json!({ "transactionType": "ADD_MONEY", "addMoneyRequest": { "amount": amount } })
}

pub fn send_airtime(amount: &str, phone_number: &str) -> Value {
    json!({
        "transactionType": "SEND_AIRTIME",
        "sendAirtimeRequest": { "amount": amount, "phoneNumber": phone_number },
    })
}

/// A unique username for one test.
pub fn username(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// One role of a deployment whose roles run as separate processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Decide,
    Project,
    Process,
    Notify,
}

impl Role {
    fn command(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Decide => "decide",
            Role::Project => "project",
            Role::Process => "process",
            Role::Notify => "notify",
        }
    }
}

/// One process of a [`Deployment`]: its role, its own data directory and, for the API, port.
struct RoleProcess {
    role: Role,
    data_dir: TempDir,
    port: Option<u16>,
    child: Option<Child>,
}

impl RoleProcess {
    fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("tally.log")
    }
}

/// Tally on Kafka and MariaDB as separate role processes (`tally api`, `decide`, `project`,
/// `process`, `notify`) sharing one fresh topic prefix and database, as
/// `docs/kafka-and-mysql.md` describes. Only API processes listen. Each process writes its log
/// to a file of its own, which [`Deployment::log_tails`] shows when a test fails.
pub struct Deployment {
    pub client: Client,
    processes: Vec<RoleProcess>,
    backend_args: Vec<String>,
    /// Dropped after the processes are killed (see `Drop`).
    _database: Option<MysqlDatabase>,
}

/// Where a [`TestApp`]'s log goes: to the test's standard output when `TALLY_TEST_ROLE_LOG`
/// asks for one, nowhere otherwise.
fn app_log_destination() -> Stdio {
    match std::env::var_os("TALLY_TEST_ROLE_LOG") {
        Some(_) => Stdio::inherit(),
        None => Stdio::null(),
    }
}

/// The lines of each process's log that [`Deployment::log_tails`] shows.
const LOG_TAIL_LINES: usize = 40;

/// What each `tally` process a test runs Tally in logs (to the test's standard error for a
/// [`TestApp`], to a file for a [`Deployment`]'s roles): `TALLY_TEST_ROLE_LOG` when set (a
/// `TALLY_LOG` filter, such as `info,tally_commands=debug`), warnings and errors otherwise.
fn role_log_filter() -> String {
    std::env::var("TALLY_TEST_ROLE_LOG").unwrap_or_else(|_| "warn".to_owned())
}

/// The read tables a replay must rebuild exactly, offsets and analysis tables included.
const READ_TABLES: [&str; 7] = [
    "accounts",
    "transactions",
    "statement_lines",
    "account_events",
    "projection_offsets",
    "daily_transaction_volumes",
    "daily_airtime_destinations",
];

/// How long the live projector may take to reach what a replay just read.
const REPLAY_MATCH_WAIT: Duration = Duration::from_secs(60);

/// Every row of the read tables of the database at `url`, as text, in key order.
async fn read_tables(url: &str) -> Result<Vec<String>> {
    let mut connection = sqlx::MySqlConnection::connect(url).await?;
    let mut rows = Vec::new();
    for table in READ_TABLES {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&mut connection)
        .await?;
        let cells: Vec<String> = columns
            .iter()
            .map(|column| format!("COALESCE(CAST(`{column}` AS CHAR), 'NULL')"))
            .collect();
        let select = format!(
            "SELECT CONCAT_WS(' | ', '{table}', {}) FROM {table} ORDER BY 1",
            cells.join(", ")
        );
        let table_rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(select))
            .fetch_all(&mut connection)
            .await?;
        rows.extend(table_rows);
    }
    Ok(rows)
}

impl Deployment {
    /// Replays the log into a fresh database with `tally replay` and checks that its read
    /// tables equal the live ones row for row, offsets included: everything the projector
    /// wrote follows from the log alone. Call it once the load has settled.
    pub async fn assert_read_tables_match_a_replay(&self) -> Result<()> {
        let live = self._database.as_ref().context("no database")?.url();
        let fresh = MysqlDatabase::create(mysql_server_url()?).await?;
        let data_dir = tempfile::tempdir()?;
        let mut args = self.backend_args.clone();
        let url_at = args
            .iter()
            .position(|arg| arg == "--database-url")
            .context("no --database-url")?;
        args[url_at + 1] = fresh.url();
        let output = Command::new(tally_bin()?)
            .arg("replay")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(&args)
            .env_remove("TALLY_KAFKA_BROKERS")
            .env_remove("TALLY_DATABASE_URL")
            .env("TALLY_LOG", "warn")
            .output()
            .context("cannot run tally replay")?;
        anyhow::ensure!(
            output.status.success(),
            "tally replay failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let replayed = read_tables(&fresh.url()).await?;
        anyhow::ensure!(!replayed.is_empty(), "the replay wrote nothing");
        let started = Instant::now();
        loop {
            let current = read_tables(&live).await?;
            if current == replayed {
                return Ok(());
            }
            if started.elapsed() > REPLAY_MATCH_WAIT {
                let first_difference = current
                    .iter()
                    .zip(&replayed)
                    .find(|(live, replayed)| live != replayed);
                bail!(
                    "live read tables ({} rows) differ from a replay ({} rows); first \
                     difference: {first_difference:?}",
                    current.len(),
                    replayed.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Runs `tally verify` beside the live roles, on the deployment's topics and database, and
    /// checks that it finds nothing: every partition's hash chain holds across the deciders
    /// that were killed or fenced, every account's money adds up, and the read tables equal a
    /// replay of the log up to where the live projector stands.
    pub fn assert_audit_clean(&self) -> Result<()> {
        let data_dir = tempfile::tempdir()?;
        let output = Command::new(tally_bin()?)
            .arg("verify")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(&self.backend_args)
            .env_remove("TALLY_KAFKA_BROKERS")
            .env_remove("TALLY_DATABASE_URL")
            .env("TALLY_LOG", "warn")
            .output()
            .context("cannot run tally verify")?;
        anyhow::ensure!(
            output.status.success(),
            "tally verify exited with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Starts one process per entry of `roles` and waits until every API answers. The APIs
    /// start first, so that one of them creates the topics before the workers subscribe.
    pub async fn spawn(roles: &[Role]) -> Result<Deployment> {
        Deployment::spawn_with(roles, &[]).await
    }

    /// Like [`Deployment::spawn`], with flags of the test's own given to every process.
    pub async fn spawn_with(roles: &[Role], extra_args: &[String]) -> Result<Deployment> {
        let (mut backend_args, database) = kafka_mysql_args().await?;
        // Every API instance must sign and check tokens with the same secret.
        let jwt_secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        backend_args.extend(["--jwt-secret".to_owned(), jwt_secret]);
        backend_args.extend_from_slice(extra_args);
        let client = Client::builder().timeout(Duration::from_secs(30)).build()?;
        let mut ordered: Vec<Role> = roles.to_vec();
        ordered.sort_by_key(|role| *role != Role::Api);
        let mut processes = Vec::with_capacity(ordered.len());
        for role in ordered {
            let port = if role == Role::Api {
                Some(free_port()?)
            } else {
                None
            };
            let data_dir = tempfile::tempdir()?;
            processes.push(RoleProcess {
                role,
                data_dir,
                port,
                child: None,
            });
        }
        let mut deployment = Deployment {
            client,
            processes,
            backend_args,
            _database: database,
        };
        for position in 0..deployment.processes.len() {
            deployment.start_at(position).await?;
        }
        Ok(deployment)
    }

    /// The base URL of the `index`th API process.
    pub fn api_url(&self, index: usize) -> Result<String> {
        let process = self.find(Role::Api, index)?;
        let port = process.port.context("an API process has no port")?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// The base URLs of every API process.
    pub fn api_urls(&self) -> Vec<String> {
        let ports = self.processes.iter().filter_map(|process| process.port);
        ports
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    /// Kills the `index`th process of `role` with SIGKILL: no draining, no committing.
    pub fn kill(&mut self, role: Role, index: usize) -> Result<()> {
        let position = self.position(role, index)?;
        if let Some(mut child) = self.processes[position].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the `index`th process of `role` again, on its data directory and port.
    pub async fn start(&mut self, role: Role, index: usize) -> Result<()> {
        let position = self.position(role, index)?;
        self.start_at(position).await
    }

    /// Processes that were started and have exited since, none of them by [`Self::kill`]:
    /// a role that crashed on its own.
    pub fn exited(&mut self) -> Result<Vec<String>> {
        let mut exited = Vec::new();
        for process in &mut self.processes {
            if let Some(child) = process.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                exited.push(format!("{:?} ({status})", process.role));
            }
        }
        Ok(exited)
    }

    /// The last lines of every process's log, to print when a test fails.
    pub fn log_tails(&self) -> String {
        let mut tails = String::new();
        for process in &self.processes {
            let log = std::fs::read_to_string(process.log_path()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            tails.push_str(&format!(
                "--- {:?} {}\n",
                process.role,
                process.log_path().display()
            ));
            tails.push_str(&tail.join("\n"));
            tails.push('\n');
        }
        tails
    }

    fn find(&self, role: Role, index: usize) -> Result<&RoleProcess> {
        Ok(&self.processes[self.position(role, index)?])
    }

    fn position(&self, role: Role, index: usize) -> Result<usize> {
        let of_role = self.processes.iter().enumerate();
        let found = of_role
            .filter(|(_, process)| process.role == role)
            .nth(index);
        found
            .map(|(position, _)| position)
            .with_context(|| format!("no {role:?} process number {index}"))
    }

    async fn start_at(&mut self, position: usize) -> Result<()> {
        let process = &mut self.processes[position];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(process.log_path())?;
        let mut command = Command::new(tally_bin()?);
        command.args([process.role.command(), "--bcrypt-cost", "10"]);
        if let Some(port) = process.port {
            command.args(["--listen", &format!("127.0.0.1:{port}")]);
        }
        // Each process keeps its name across restarts, as a production process would.
        let instance_id = format!("{}-{position}", process.role.command());
        command.args(["--kafka-instance-id", &instance_id]);
        let child = command
            .arg("--data-dir")
            .arg(process.data_dir.path())
            .args(&self.backend_args)
            .env_remove("TALLY_KAFKA_BROKERS")
            .env_remove("TALLY_DATABASE_URL")
            .env("TALLY_LOG", role_log_filter())
            .env("TALLY_ADMIN_USERNAME", "admin")
            .env("TALLY_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start tally {}", process.role.command()))?;
        process.child = Some(child);
        if let Some(port) = process.port {
            self.wait_until_healthy(position, port).await?;
        }
        Ok(())
    }

    async fn wait_until_healthy(&mut self, position: usize, port: u16) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < START_WAIT {
            if let Some(child) = self.processes[position].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "tally api exited during start-up: {status}\n{}",
                    self.log_tails()
                );
            }
            let health = self
                .client
                .get(format!("http://127.0.0.1:{port}/health"))
                .send();
            if health
                .await
                .is_ok_and(|response| response.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("tally api did not become healthy within {START_WAIT:?}")
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for process in &mut self.processes {
            if let Some(mut child) = process.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A mixed load of keyed transactions from concurrent clients over a few generously funded
/// accounts of a [`Deployment`], and the checks that follow a fault: every accepted transaction
/// ends exactly once, every account's event stream is gapless, and every balance is what a
/// simple model of the accepted requests predicts.
pub mod ledger_load {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;

    use super::*;

    /// What each account is funded with before the load, in cents: far more than the load
    /// can spend, so that no transaction fails for want of money.
    pub const FUNDING_CENTS: i64 = 100_000_000;
    /// The airtime simulator rejects every number ending in 0000.
    const REJECTED_NUMBER: &str = "+254712340000";
    /// How long one request keeps being resent (same key, same body) before the load fails.
    pub const RESEND_WAIT: Duration = Duration::from_secs(150);
    /// Pause between two sends of one request.
    const RESEND_PAUSE: Duration = Duration::from_millis(250);
    /// How long every accepted transaction together may take to reach a final status.
    pub const FINALS_WAIT: Duration = Duration::from_secs(150);
    /// Every this many requests, one is sent again after its 202 to check it replays.
    const DUPLICATE_EVERY: usize = 97;
    /// Page size for reading an account's events (the API's maximum).
    const EVENTS_PAGE: usize = 500;
    /// Mismatches listed when a check fails; the rest are counted.
    const MISMATCHES_SHOWN: usize = 8;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        AddMoney,
        Airtime,
        RejectedAirtime,
    }

    /// One client request: the account it is sent as, what it asks, and its own key.
    #[derive(Clone, Debug)]
    pub struct Request {
        pub account: usize,
        pub kind: Kind,
        pub amount_cents: i64,
        pub key: String,
        phone_number: String,
    }

    impl Request {
        /// Request `index` of a run: three in eight add money, four send airtime to numbers
        /// the simulator delivers to, one to a number it rejects.
        fn of(index: usize, accounts: usize, run: &str) -> Request {
            let kind = match index % 8 {
                0..=2 => Kind::AddMoney,
                3..=6 => Kind::Airtime,
                _ => Kind::RejectedAirtime,
            };
            let amount_cents = 100 + (index as i64 * 37) % 900;
            let phone_number = match kind {
                Kind::RejectedAirtime => REJECTED_NUMBER.to_owned(),
                _ => format!("+25471234{:04}", 1 + index % 9_998),
            };
            let key = format!("{run}-{index}");
            Request {
                account: index % accounts,
                kind,
                amount_cents,
                key,
                phone_number,
            }
        }

        fn body(&self) -> Value {
            let amount = format_cents(self.amount_cents);
            match self.kind {
                Kind::AddMoney => add_money(&amount),
                _ => send_airtime(&amount, &self.phone_number),
            }
        }

        /// The status and failure reason this request must end with.
        fn expected_end(&self) -> (&'static str, Option<&'static str>) {
            match self.kind {
                Kind::RejectedAirtime => ("FAILED", Some("airtime_provider_rejected")),
                _ => ("SUCCESSFUL", None),
            }
        }

        /// What the request does to its account's balance once it ended with `status`.
        fn balance_change_cents(&self, status: &str) -> i64 {
            match (status, self.kind) {
                ("SUCCESSFUL", Kind::AddMoney) => self.amount_cents,
                ("SUCCESSFUL", _) => -self.amount_cents,
                _ => 0,
            }
        }
    }

    pub fn format_cents(cents: i64) -> String {
        let sign = if cents < 0 { "-" } else { "" };
        format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
    }

    /// The load: its accounts, its requests, and a count of requests answered so far that a
    /// test watches to place its faults.
    pub struct Load {
        pub users: Vec<User>,
        pub requests: Vec<Request>,
        pub answered: Arc<AtomicUsize>,
        /// Sends that got no 202 and were sent again.
        pub resends: Arc<AtomicUsize>,
        funding: Vec<String>,
        urls: Vec<String>,
        client: Client,
        clients: usize,
    }

    impl Load {
        /// Signs up `accounts` users, opens and funds their accounts, and plans
        /// `transactions` requests to be sent by `clients` concurrent clients.
        pub async fn prepare(
            deployment: &Deployment,
            accounts: usize,
            transactions: usize,
            clients: usize,
        ) -> Result<Load> {
            let urls = deployment.api_urls();
            let client = deployment.client.clone();
            let url = urls.first().context("the deployment has no API")?.clone();
            let run = username("load");
            let mut users = Vec::with_capacity(accounts);
            let mut funding = Vec::with_capacity(accounts);
            for _ in 0..accounts {
                let user = signup_and_open(&client, &url, &username("faults")).await?;
                let key = format!("{run}-funding-{}", user.uid);
                let body = add_money(&format_cents(FUNDING_CENTS));
                funding.push(send_until_accepted(&client, &urls, 0, &user, &key, &body).await?);
                users.push(user);
            }
            let requests = (0..transactions).map(|index| Request::of(index, accounts, &run));
            Ok(Load {
                users,
                requests: requests.collect(),
                answered: Arc::new(AtomicUsize::new(0)),
                resends: Arc::new(AtomicUsize::new(0)),
                funding,
                urls,
                client,
                clients,
            })
        }

        /// Sends every request, `clients` at a time, each until it is answered 202, and
        /// returns the transaction id of each. Requests are spread over the API processes.
        pub async fn run(self: Arc<Self>) -> Result<Vec<String>> {
            let sends = (0..self.requests.len()).map(|index| {
                let load = self.clone();
                async move { load.send(index).await }
            });
            let answers = futures::stream::iter(sends).buffered(self.clients);
            answers
                .collect::<Vec<Result<String>>>()
                .await
                .into_iter()
                .collect()
        }

        async fn send(&self, index: usize) -> Result<String> {
            let request = &self.requests[index];
            let user = &self.users[request.account];
            let body = request.body();
            let (client, urls) = (&self.client, &self.urls);
            let started = Instant::now();
            let mut attempt = index;
            let transaction_id = loop {
                match try_send(
                    client,
                    &urls[attempt % urls.len()],
                    user,
                    &request.key,
                    &body,
                )
                .await
                {
                    Ok(Some(transaction_id)) => break transaction_id,
                    Ok(None) if started.elapsed() < RESEND_WAIT => {}
                    Ok(None) => bail!(
                        "request {index} ({}) unanswered for {RESEND_WAIT:?}",
                        request.key
                    ),
                    Err(refused) => return Err(refused.context(format!("request {index} refused"))),
                }
                self.resends.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(RESEND_PAUSE).await;
            };
            if index.is_multiple_of(DUPLICATE_EVERY) {
                let again =
                    send_until_accepted(client, urls, attempt + 1, user, &request.key, &body);
                let again = again.await?;
                if again != transaction_id {
                    let expected = &transaction_id;
                    bail!("request {index} sent again with its key became {again}, not {expected}");
                }
            }
            self.answered.fetch_add(1, Ordering::Relaxed);
            Ok(transaction_id)
        }

        /// Waits until every accepted transaction, funding included, is final, and checks
        /// each status, each account's event stream and each balance against the model.
        pub async fn verify(&self, accepted: &[String]) -> Result<()> {
            anyhow::ensure!(
                accepted.len() == self.requests.len(),
                "not every request accepted"
            );
            let distinct: HashSet<&String> = accepted.iter().chain(&self.funding).collect();
            anyhow::ensure!(
                distinct.len() == accepted.len() + self.funding.len(),
                "two requests with different keys got the same transaction id"
            );
            let finals = self.wait_finals(accepted).await?;
            self.check_statuses(&finals)?;
            for account in 0..self.users.len() {
                self.check_events(account, accepted).await?;
                self.check_balance(account, &finals).await?;
            }
            Ok(())
        }

        async fn wait_finals(&self, accepted: &[String]) -> Result<Vec<Value>> {
            let deadline = Instant::now() + FINALS_WAIT;
            let funding = self.funding.iter().enumerate();
            let requests = self
                .requests
                .iter()
                .map(|request| request.account)
                .zip(accepted);
            let waits = funding.chain(requests).map(|(account, transaction_id)| {
                let user = &self.users[account];
                wait_final(&self.client, &self.urls[0], user, transaction_id, deadline)
            });
            let finals = futures::stream::iter(waits).buffered(self.clients);
            let finals: Vec<Result<Value>> = finals.collect().await;
            let finals: Vec<Value> = finals.into_iter().collect::<Result<_>>()?;
            let (funding, requests) = finals.split_at(self.funding.len());
            for funded in funding {
                anyhow::ensure!(
                    funded["transactionStatus"] == "SUCCESSFUL",
                    "funding: {funded}"
                );
            }
            Ok(requests.to_vec())
        }

        fn check_statuses(&self, finals: &[Value]) -> Result<()> {
            let mut mismatches = Vec::new();
            for (index, (request, transaction)) in self.requests.iter().zip(finals).enumerate() {
                let (status, reason) = request.expected_end();
                let reason_found = transaction["failureReason"].as_str();
                if transaction["transactionStatus"] != status || reason_found != reason {
                    mismatches.push(format!("request {index} {request:?}: {transaction}"));
                }
            }
            ensure_none(
                "final status differs from the request's expected end",
                &mismatches,
            )
        }

        async fn check_events(&self, account: usize, accepted: &[String]) -> Result<()> {
            let user = &self.users[account];
            let events = account_events(&self.client, &self.urls[0], user).await?;
            let sequences: Vec<u64> = events
                .iter()
                .filter_map(|event| event["sequence"].as_u64())
                .collect();
            let gaps: Vec<String> = sequences
                .iter()
                .enumerate()
                .filter(|(position, sequence)| **sequence != *position as u64 + 1)
                .map(|(position, sequence)| {
                    format!("position {position} holds sequence {sequence}")
                })
                .collect();
            ensure_none(
                &format!("account {} events are not 1..={}", user.uid, events.len()),
                &gaps,
            )?;

            let mut endings: HashMap<String, Vec<u64>> = HashMap::new();
            for event in &events {
                let event_type = event["eventType"].as_str().unwrap_or_default();
                if event_type == "TransactionSucceeded" || event_type == "TransactionFailed" {
                    let transaction_id = transaction_id_in(&event["payload"])
                        .with_context(|| format!("no transaction id in {event}"))?;
                    let sequence = event["sequence"].as_u64().unwrap_or_default();
                    endings.entry(transaction_id).or_default().push(sequence);
                }
            }
            let own = self
                .requests
                .iter()
                .zip(accepted)
                .filter(|(request, _)| request.account == account);
            let own_ids: Vec<&String> = own
                .map(|(_, id)| id)
                .chain([&self.funding[account]])
                .collect();
            let mut wrong: Vec<String> = own_ids
                .iter()
                .filter(|id| endings.get(id.as_str()).is_none_or(|ends| ends.len() != 1))
                .map(|id| {
                    format!(
                        "transaction {id} ends at sequences {:?}",
                        endings.get(id.as_str())
                    )
                })
                .collect();
            if endings.len() != own_ids.len() {
                wrong.push(format!(
                    "{} transactions end, {} accepted",
                    endings.len(),
                    own_ids.len()
                ));
            }
            ensure_none(
                &format!("account {}: not exactly one ending each", user.uid),
                &wrong,
            )
        }

        async fn check_balance(&self, account: usize, finals: &[Value]) -> Result<()> {
            let user = &self.users[account];
            let changes = self
                .requests
                .iter()
                .zip(finals)
                .filter(|(request, _)| request.account == account);
            let model_cents: i64 = FUNDING_CENTS
                + changes
                    .map(|(request, end)| {
                        request.balance_change_cents(
                            end["transactionStatus"].as_str().unwrap_or_default(),
                        )
                    })
                    .sum::<i64>();
            let expected = format_cents(model_cents);
            let balance = settled_balance(&self.client, &self.urls[0], user).await?;
            let matches = balance["accountBalance"] == expected.as_str()
                && balance["availableBalance"] == expected.as_str()
                && balance["heldBalance"] == "0.00";
            anyhow::ensure!(
                matches,
                "account {} balance {balance}, model says {expected} with nothing held",
                user.uid
            );
            Ok(())
        }
    }

    fn ensure_none(what: &str, mismatches: &[String]) -> Result<()> {
        if mismatches.is_empty() {
            return Ok(());
        }
        let shown = mismatches
            .iter()
            .take(MISMATCHES_SHOWN)
            .cloned()
            .collect::<Vec<_>>();
        bail!(
            "{what}: {} cases, first: \n  {}",
            mismatches.len(),
            shown.join("\n  ")
        )
    }

    /// The transaction id anywhere in an event's payload.
    fn transaction_id_in(payload: &Value) -> Option<String> {
        match payload {
            Value::Object(fields) => fields.iter().find_map(|(name, value)| {
                let named = name == "transactionId" || name == "transaction_id";
                match value {
                    Value::String(id) if named => Some(id.clone()),
                    _ => transaction_id_in(value),
                }
            }),
            Value::Array(items) => items.iter().find_map(transaction_id_in),
            _ => None,
        }
    }

    /// Sends a keyed request once: `Ok(Some(id))` on 202, `Ok(None)` when it may be sent
    /// again (no answer, 409, 429, 5xx), and an error for any other answer.
    async fn try_send(
        client: &Client,
        url: &str,
        user: &User,
        key: &str,
        body: &Value,
    ) -> Result<Option<String>> {
        let sent = client
            .post(format!("{url}/transaction"))
            .bearer_auth(&user.token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        let Ok(response) = sent else { return Ok(None) };
        let status = response.status().as_u16();
        let Ok(text) = response.text().await else {
            return Ok(None);
        };
        match status {
            202 => {
                let answer: Value = serde_json::from_str(&text)?;
                let id = answer["transactionId"]
                    .as_str()
                    .context("202 without transactionId")?;
                Ok(Some(id.to_owned()))
            }
            409 | 429 | 500..=599 => Ok(None),
            _ => bail!("answered {status}: {text}"),
        }
    }

    async fn send_until_accepted(
        client: &Client,
        urls: &[String],
        first: usize,
        user: &User,
        key: &str,
        body: &Value,
    ) -> Result<String> {
        let started = Instant::now();
        for attempt in first.. {
            if let Some(id) = try_send(client, &urls[attempt % urls.len()], user, key, body).await?
            {
                return Ok(id);
            }
            if started.elapsed() > RESEND_WAIT {
                break;
            }
            tokio::time::sleep(RESEND_PAUSE).await;
        }
        bail!("{key} unanswered for {RESEND_WAIT:?}")
    }

    async fn wait_final(
        client: &Client,
        url: &str,
        user: &User,
        id: &str,
        deadline: Instant,
    ) -> Result<Value> {
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let response = client
                .get(format!("{url}/transaction/{id}"))
                .bearer_auth(&user.token)
                .send()
                .await;
            if let Ok(response) = response
                && response.status().as_u16() == 200
                && let Ok(transaction) = response.json::<Value>().await
            {
                let status = transaction["transactionStatus"]
                    .as_str()
                    .unwrap_or_default();
                if status == "SUCCESSFUL" || status == "FAILED" {
                    return Ok(transaction);
                }
                last = transaction;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("transaction {id} not final by the deadline; last seen {last}")
    }

    /// The balance once nothing is held, or as it is when the wait runs out.
    async fn settled_balance(client: &Client, url: &str, user: &User) -> Result<Value> {
        let started = Instant::now();
        loop {
            let response = client
                .get(format!("{url}/account/balance/{}", user.uid))
                .bearer_auth(&user.token)
                .send()
                .await?;
            let balance = expect_status(response, 200).await?;
            if balance["heldBalance"] == "0.00" || started.elapsed() > FINAL_WAIT {
                return Ok(balance);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn account_events(client: &Client, url: &str, user: &User) -> Result<Vec<Value>> {
        let mut events = Vec::new();
        let mut after = Some(0u64);
        while let Some(sequence) = after {
            let path = format!(
                "{url}/account/{}/events?limit={EVENTS_PAGE}&after={sequence}",
                user.uid
            );
            let response = client.get(path).bearer_auth(&user.token).send().await?;
            let page = expect_status(response, 200).await?;
            events.extend(page["events"].as_array().cloned().unwrap_or_default());
            after = page["nextAfter"].as_u64();
        }
        Ok(events)
    }

    async fn signup_and_open(client: &Client, url: &str, name: &str) -> Result<User> {
        let credentials = json!({ "username": name, "password": "correct horse battery staple" });
        let signup = client
            .post(format!("{url}/signup/username"))
            .json(&credentials)
            .send();
        expect_status(signup.await?, 201).await?;
        let login = client
            .post(format!("{url}/login"))
            .json(&credentials)
            .send();
        let login = expect_status(login.await?, 200).await?;
        let token = login["token"].as_str().context("no token")?.to_owned();
        let me = client.get(format!("{url}/me")).bearer_auth(&token).send();
        let me = expect_status(me.await?, 200).await?;
        let uid = me["uid"].as_str().context("no uid")?.to_owned();
        let account = json!({
            "accountInfo": { "name": "Fault Load", "email": "load@example.com",
                             "phoneNumber": "+14155552671" },
            "currencyCode": "USD",
        });
        let opened = client
            .post(format!("{url}/account/{uid}"))
            .bearer_auth(&token)
            .json(&account)
            .send();
        expect_status(opened.await?, 201).await?;
        Ok(User { uid, token })
    }
}
