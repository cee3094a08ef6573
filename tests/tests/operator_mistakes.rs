//! Settings an operator can get wrong are refused with a message naming the mistake, before
//! anything is written where it was not meant to be.

use std::process::{Command, Output};

use anyhow::Result;
use tally_tests::{Backend, TestApp, tally_bin};

fn tally(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut command = Command::new(tally_bin()?);
    // Only the settings a test gives: the shell's (a broker address, say) would change
    // which Tally starts.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TALLY_") {
            command.env_remove(name);
        }
    }
    command.args(args).env("TALLY_LOG", "warn");
    for (name, value) in env {
        command.env(name, value);
    }
    Ok(command.output()?)
}

#[test]
fn an_admin_username_without_a_password_stops_the_start() -> Result<()> {
    let data_dir = tempfile::tempdir()?;
    let data_dir = data_dir.path().to_str().expect("a utf-8 path");
    let args = ["up", "--data-dir", data_dir, "--listen", "127.0.0.1:0"];
    let started = tally(&args, &[("TALLY_ADMIN_USERNAME", "root")])?;

    assert!(!started.status.success());
    let stderr = String::from_utf8_lossy(&started.stderr);
    let stdout = String::from_utf8_lossy(&started.stdout);
    assert!(
        stderr.contains("TALLY_ADMIN_PASSWORD") || stdout.contains("TALLY_ADMIN_PASSWORD"),
        "{stderr}\n{stdout}"
    );
    Ok(())
}

#[test]
fn a_user_created_in_a_data_directory_without_a_read_store_is_refused() -> Result<()> {
    let parent = tempfile::tempdir()?;
    let data_dir = parent.path().join("mistyped");
    let data_dir_arg = data_dir.to_str().expect("a utf-8 path");
    let args = [
        "user",
        "create",
        "--username",
        "gina",
        "--role",
        "ROLE_ADMIN",
        "--data-dir",
        data_dir_arg,
    ];
    let created = tally(&args, &[("TALLY_USER_PASSWORD", "a long admin password")])?;

    assert!(!created.status.success());
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(stderr.contains("no read store at"), "{stderr}");
    assert!(
        !data_dir.exists(),
        "the mistyped data directory was created"
    );
    Ok(())
}

/// A second Tally on a data directory a running one holds waits a moment for the lock (a
/// process killed just before may still hold it), then gives up naming the lock.
#[tokio::test]
async fn a_second_tally_on_a_held_data_directory_is_refused() -> Result<()> {
    let app = TestApp::spawn_on(Backend::Embedded).await?;
    let data_dir = app.data_dir.path().to_str().expect("a utf-8 path");
    let args = ["up", "--data-dir", data_dir, "--listen", "127.0.0.1:0"];
    let second = tally(&args, &[])?;

    assert!(!second.status.success());
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&second.stderr),
        String::from_utf8_lossy(&second.stdout)
    );
    assert!(output.contains("locked"), "{output}");
    let health = app
        .client
        .get(format!("{}/health", app.base_url))
        .send()
        .await?;
    assert!(health.status().is_success(), "the first Tally stopped");
    Ok(())
}
