//! A real SMTP server process for tests: `smtp_server.py` (aiosmtpd) on 127.0.0.1.
//!
//! [`SmtpServer::start`] runs it on a free port chosen by the server itself, waits for it to
//! say it listens, and reads back what it received; [`SmtpServer::stop`] and
//! [`SmtpServer::start_again`] take it down and bring it back on the same port, keeping what
//! it received. It needs a Python 3 with aiosmtpd, found in this order:
//!
//! 1. the interpreter named by `TALLY_TEST_PYTHON`;
//! 2. `python3`, when it can import aiosmtpd (CI can `pip install aiosmtpd==1.4.6` up front);
//! 3. a virtual environment under Cargo's target folder, created once with `python3 -m venv`
//!    and `pip install aiosmtpd==1.4.6` from PyPI, and reused by later runs.
//!
//! When none works the test fails, saying what to install: it is never skipped. The file is
//! shared by the processor's tests and the end-to-end tests, which include it by path.

#![allow(dead_code)] // Each test binary uses part of the harness.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The aiosmtpd release the tests are written against.
pub const AIOSMTPD_VERSION: &str = "1.4.6";

/// How long the SMTP server may take to start listening: Python's start-up and imports take
/// well under a second.
const SMTP_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for messages a test expects to have arrived.
const MESSAGES_TIMEOUT: Duration = Duration::from_secs(10);

/// What to refuse, by recipient address.
#[derive(Clone, Debug, Default)]
pub struct SmtpServerOptions {
    /// Answered `550` at `RCPT TO`.
    pub reject: Vec<String>,
    /// Answered `451` at `RCPT TO`.
    pub greylist: Vec<String>,
}

/// One message the server accepted, as `smtp_server.py` records it.
#[derive(Clone, Debug, Deserialize)]
pub struct ReceivedMessage {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub data: String,
    pub headers: Vec<(String, String)>,
    pub subject: Option<String>,
    pub to: Option<String>,
    pub header_addresses: Vec<String>,
    pub content_type: String,
    pub text: Option<String>,
    pub html: Option<String>,
}

impl ReceivedMessage {
    /// The values of every header called `name`, whatever its case.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// An aiosmtpd server process, stopped when dropped.
pub struct SmtpServer {
    pub port: u16,
    options: SmtpServerOptions,
    /// The running process and its stdin; `None` while stopped. Closing stdin tells the server
    /// to stop, even if this process dies without dropping.
    process: Option<(Child, ChildStdin)>,
    messages_file: PathBuf,
    _folder: tempfile::TempDir,
}

impl SmtpServer {
    pub fn start(options: SmtpServerOptions) -> SmtpServer {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let messages_file = folder.path().join("messages.jsonl");
        let (child, stdin, port) = spawn(&options, &messages_file, 0);
        SmtpServer {
            port,
            options,
            process: Some((child, stdin)),
            messages_file,
            _folder: folder,
        }
    }

    /// Stops the server: connections to its port are refused until [`SmtpServer::start_again`].
    /// What it received stays readable.
    pub fn stop(&mut self) {
        if let Some((mut child, _stdin)) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, appending to the same messages.
    pub fn start_again(&mut self) {
        self.stop();
        let (child, stdin, port) = spawn(&self.options, &self.messages_file, self.port);
        assert_eq!(
            port, self.port,
            "the smtp test server came back on another port"
        );
        self.process = Some((child, stdin));
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        let Ok(text) = std::fs::read_to_string(&self.messages_file) else {
            return Vec::new();
        };
        // A line the server is still writing is not a message yet: only whole lines count.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|line| serde_json::from_str(line).expect("a message line the server wrote"))
            .collect()
    }

    /// The messages received, once there are `count` of them.
    pub fn wait_for_messages(&self, count: usize) -> Vec<ReceivedMessage> {
        self.wait_for_messages_within(count, MESSAGES_TIMEOUT)
    }

    /// The messages received, once there are `count` of them or `timeout` has passed.
    pub fn wait_for_messages_within(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count || Instant::now() > deadline {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `smtp_server.py` on `port` (0 for a free one) and returns it once it listens.
fn spawn(options: &SmtpServerOptions, messages_file: &Path, port: u16) -> (Child, ChildStdin, u16) {
    // From the processor's folder or the end-to-end tests', the same script.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../processor/tests/support/smtp_server.py"
    );
    let mut command = Command::new(python());
    command.arg(script).arg("--out").arg(messages_file);
    command.arg("--port").arg(port.to_string());
    for address in &options.reject {
        command.arg("--reject").arg(address);
    }
    for address in &options.greylist {
        command.arg("--greylist").arg(address);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the smtp test server starts");

    let stdin = child.stdin.take().expect("a piped stdin");
    let stdout = child.stdout.take().expect("a piped stdout");
    match listening_port(stdout) {
        Some(port) => (child, stdin, port),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the smtp test server did not say it listens; see its stderr above");
        }
    }
}

/// The port of the server's `LISTENING <port>` line, read with a deadline.
fn listening_port(stdout: std::process::ChildStdout) -> Option<u16> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver.recv_timeout(SMTP_START_TIMEOUT).ok()?;
    line.trim().strip_prefix("LISTENING ")?.parse().ok()
}

/// A Python that can import aiosmtpd, found or made once per test binary.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(find_or_make_python)
}

fn find_or_make_python() -> PathBuf {
    if let Some(python) = std::env::var_os("TALLY_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let system = PathBuf::from("python3");
    if imports_aiosmtpd(&system) {
        return system;
    }

    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("aiosmtpd-{AIOSMTPD_VERSION}"));
    let venv_python = venv.join("bin/python");
    if imports_aiosmtpd(&venv_python) {
        return venv_python;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    let requirement = format!("aiosmtpd=={AIOSMTPD_VERSION}");
    run(Command::new(&venv_python).args(["-m", "pip", "install", "--quiet", &requirement]));
    assert!(
        imports_aiosmtpd(&venv_python),
        "aiosmtpd is not importable; `pip install {requirement}` or set TALLY_TEST_PYTHON"
    );
    venv_python
}

fn imports_aiosmtpd(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn run(command: &mut Command) {
    let status = command.status();
    let ok = status.as_ref().is_ok_and(|status| status.success());
    assert!(
        ok,
        "{command:?} failed ({status:?}); install aiosmtpd=={AIOSMTPD_VERSION} for python3 \
         or set TALLY_TEST_PYTHON"
    );
}
