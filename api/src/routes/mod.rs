//! The HTTP routes, assembled into one router with the limits every request shares.

mod accounts;
mod docs;
mod notifications;
mod transactions;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error;
use crate::extract::REQUEST_BODY_BYTES_MAX;
use crate::state::AppState;

/// How long a client may take to send a request body. Every body is at most 64 KiB, which
/// arrives in well under a second on any working link.
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::auth::router())
        .merge(accounts::router())
        .merge(transactions::router())
        .merge(notifications::router())
        .merge(docs::router())
        .route("/health", get(health))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .layer(RequestBodyTimeoutLayer::new(REQUEST_BODY_TIMEOUT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "UP" }))
}
