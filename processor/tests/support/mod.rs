//! Test servers on 127.0.0.1: a real SMTP server process ([`smtp`]), and HTTP servers for
//! routers.

#![allow(dead_code)] // Each test binary uses part of the harness.

mod smtp;

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

#[allow(unused_imports)] // Not every test binary uses the SMTP server.
pub use smtp::*;

/// Serves `router` on a free port of 127.0.0.1 and returns its address.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free local port");
    let address = listener.local_addr().expect("a bound address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

/// A port of 127.0.0.1 that nothing listens on: bound, then released.
pub fn unused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
    listener.local_addr().expect("a bound address").port()
}
