//! What every handler can reach.

use std::sync::Arc;

use axum::extract::FromRef;
use tally_commands::log::EventLog;
use tally_projections::ReadStore;

use crate::auth::AuthState;

#[derive(Clone)]
pub struct AppState {
    pub auth: AuthState,
    pub log: Arc<dyn EventLog>,
    pub store: ReadStore,
}

impl FromRef<AppState> for AuthState {
    fn from_ref(state: &AppState) -> AuthState {
        state.auth.clone()
    }
}
