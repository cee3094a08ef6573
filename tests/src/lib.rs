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

impl MysqlDatabase {
    async fn create() -> Result<MysqlDatabase> {
        let server_url = std::env::var("TALLY_TEST_MYSQL_URL").context(
            "TALLY_TEST_MYSQL_URL is unset: start MariaDB with deploy/infra.sh up and \
             eval \"$(deploy/infra.sh env)\"",
        )?;
        let name = format!("tally_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::MySqlConnection::connect(&server_url).await?;
        let create = sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"));
        sqlx::query(create).execute(&mut connection).await?;
        Ok(MysqlDatabase { server_url, name })
    }

    fn url(&self) -> String {
        let base = self
            .server_url
            .rsplit_once('/')
            .map_or(self.server_url.as_str(), |(base, _)| base);
        format!("{base}/{}", self.name)
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

fn tally_bin() -> Result<PathBuf> {
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
    let database = MysqlDatabase::create().await?;
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
        let data_dir = tempfile::tempdir()?;
        let port = free_port()?;
        let client = Client::builder().timeout(Duration::from_secs(30)).build()?;
        let base_url = format!("http://127.0.0.1:{port}");
        let (backend_args, database) = match backend {
            Backend::Embedded => (Vec::new(), None),
            Backend::KafkaMysql => kafka_mysql_args().await?,
        };
        let mut app = TestApp {
            base_url,
            client,
            data_dir,
            backend,
            port,
            backend_args,
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
            .env_remove("TALLY_KAFKA_BROKERS")
            .env_remove("TALLY_DATABASE_URL")
            .env("TALLY_LOG", "warn")
            .env("TALLY_ADMIN_USERNAME", "admin")
            .env("TALLY_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(Stdio::null())
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
