//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the folder's
//! files at compile time, and Cargo does not watch a folder it was not told about.

fn main() {
    println!("cargo:rerun-if-changed=../migrations/sqlite");
    println!("cargo:rerun-if-changed=../migrations/mysql");
}
