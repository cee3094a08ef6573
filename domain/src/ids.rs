//! Identifiers. Each is a UUID in a newtype so that an account id can never be passed where a
//! transaction id is meant.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUID v7).
            pub fn new() -> $name {
                $name(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> $name {
                $name::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id! {
    /// An account. Each user has at most one account, and its id is the user's uid.
    AccountId
}
uuid_id! {
    /// A transaction, and the correlation id of every event it causes.
    TransactionId
}
uuid_id! {
    /// One event in the log.
    EventId
}
uuid_id! {
    /// One command in the log: the causation id of the events it produces.
    CommandId
}
uuid_id! {
    /// One notification to deliver.
    NotificationId
}
