//! What every handler can reach.

use std::sync::Arc;

use axum::extract::FromRef;
use tally_commands::log::EventLog;
use tally_commands::message::CommandEnvelope;
use tally_domain::{AccountId, CommandId, LedgerCommand};
use tally_projections::ReadStore;
use uuid::Uuid;

use crate::auth::AuthState;
use crate::error::ApiError;
use crate::reads::CurrencyCache;

#[derive(Clone)]
pub struct AppState {
    pub auth: AuthState,
    pub log: Arc<dyn EventLog>,
    pub store: ReadStore,
    pub currencies: Arc<CurrencyCache>,
}

impl FromRef<AppState> for AuthState {
    fn from_ref(state: &AppState) -> AuthState {
        state.auth.clone()
    }
}

impl AppState {
    pub fn new(auth: AuthState, log: Arc<dyn EventLog>, store: ReadStore) -> AppState {
        AppState {
            auth,
            log,
            store,
            currencies: Arc::default(),
        }
    }

    /// Appends a command to its account's partition and returns its id once it is durable.
    /// A log that cannot take it answers 503: the caller may retry, with the same
    /// idempotency key where it has one.
    pub async fn append_command(
        &self,
        account_id: AccountId,
        requested_by: Uuid,
        command: LedgerCommand,
    ) -> Result<CommandId, ApiError> {
        let envelope = CommandEnvelope::new(account_id, Some(requested_by), command);
        self.log
            .append(vec![envelope.to_record()])
            .await
            .map_err(|error| {
                tracing::error!(error = %error, "command append failed");
                ApiError::ServiceUnavailable { retry_after_s: 1 }
            })?;
        Ok(envelope.command_id)
    }
}
