//! Retrying provider calls until the provider answers.
//!
//! A failed call is ambiguous: the provider may have delivered the top-up and lost only its
//! answer. Giving up would mean either failing a transaction whose airtime was delivered or
//! leaving it open forever, so [`send_until_answered`] never gives up: it retries with the same
//! idempotency reference, with capped exponential backoff and jitter, until an answer comes or
//! shutdown is asked for. Stopping leaves the batch uncommitted; it is redelivered on the next
//! start and the provider, deduplicating by reference, answers it without buying twice.

use std::error::Error;
use std::time::Duration;

use tally_domain::AirtimeOutcome;
use tokio::sync::watch;

use crate::airtime::{AirtimeProvider, AirtimeRequest, ProviderError};
use crate::shutdown;

/// How failed calls are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// The ceiling of the first retry's delay; each further retry doubles it.
    pub delay_ms_min: u64,
    /// The ceiling no delay exceeds, however many retries came before.
    pub delay_ms_max: u64,
    /// Retries logged at warn level before they are logged at error level.
    pub attempts_warn_max: u32,
}

/// The delay ceiling before the `retry`-th retry (1 for the first): `delay_ms_min` doubled
/// `retry - 1` times, capped at `delay_ms_max`.
pub fn backoff_ceiling_ms(retry: u32, policy: &RetryPolicy) -> u64 {
    let factor = 2_u64.saturating_pow(retry.saturating_sub(1));
    policy
        .delay_ms_min
        .saturating_mul(factor)
        .min(policy.delay_ms_max)
}

/// A delay between half the ceiling and the ceiling, so that calls failing together do not
/// retry together, while none retries at once.
pub fn jittered_ms(ceiling_ms: u64, rng: &mut impl rand::Rng) -> u64 {
    let half = ceiling_ms / 2;
    half + rng.random_range(0..=ceiling_ms - half)
}

/// Calls the provider until it answers. `None` when shutdown was asked for first.
///
/// A call already under way is allowed to finish (the provider's own timeout bounds it), so a
/// shutdown does not throw away answers that are about to arrive.
pub async fn send_until_answered(
    provider: &dyn AirtimeProvider,
    request: &AirtimeRequest,
    policy: &RetryPolicy,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<AirtimeOutcome> {
    // Endless on purpose: only the provider's answer may end an airtime transaction (see the
    // module doc). It stops when shutdown is asked for, checked before every call and during
    // every backoff.
    let mut retry = 0_u32;
    loop {
        if shutdown::is_requested(shutdown) {
            return None;
        }
        let error = match provider.send(request).await {
            Ok(outcome) => return Some(outcome),
            Err(error) => error,
        };

        retry = retry.saturating_add(1);
        let ceiling_ms = backoff_ceiling_ms(retry, policy);
        let delay_ms = jittered_ms(ceiling_ms, &mut rand::rng());
        log_retry(request, &error, retry, delay_ms, policy);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
            () = shutdown::requested(shutdown) => return None,
        }
    }
}

fn log_retry(
    request: &AirtimeRequest,
    error: &ProviderError,
    retry: u32,
    delay_ms: u64,
    policy: &RetryPolicy,
) {
    let transaction_id = request.transaction_id;
    let error_chain = chain(error);
    if error.needs_operator() || retry > policy.attempts_warn_max {
        tracing::error!(
            %transaction_id,
            retry,
            delay_ms,
            error = %error_chain,
            "airtime provider gave no answer; retrying"
        );
    } else {
        tracing::warn!(
            %transaction_id,
            retry,
            delay_ms,
            error = %error_chain,
            "airtime provider gave no answer; retrying"
        );
    }
}

/// An error and its causes, outermost first: `a: b: c`.
pub(crate) fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        delay_ms_min: 100,
        delay_ms_max: 30_000,
        attempts_warn_max: 10,
    };

    #[test]
    fn the_backoff_ceiling_doubles_from_the_minimum() {
        let ceilings: Vec<u64> = (1..=5)
            .map(|retry| backoff_ceiling_ms(retry, &POLICY))
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1_600]);
    }

    #[test]
    fn the_backoff_ceiling_stops_at_the_maximum_however_many_retries() {
        assert_eq!(backoff_ceiling_ms(9, &POLICY), 25_600);
        assert_eq!(backoff_ceiling_ms(10, &POLICY), 30_000);
        assert_eq!(backoff_ceiling_ms(u32::MAX, &POLICY), 30_000);
    }

    #[test]
    fn jittered_delays_stay_between_half_the_ceiling_and_the_ceiling() {
        let mut rng = rand::rng();
        for ceiling in [0, 1, 7, 100, 30_000] {
            for _ in 0..200 {
                let delay = jittered_ms(ceiling, &mut rng);
                assert!(
                    (ceiling / 2..=ceiling).contains(&delay),
                    "{delay} of {ceiling}"
                );
            }
        }
    }
}
