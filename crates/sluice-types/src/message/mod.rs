//! The message model.
//!
//! A message is exactly `{payload: bytes, properties: map<string, string>}` — the envelope that
//! every backend stores verbatim. Properties whose key starts with `_` are reserved for the
//! system (see [`keys`]); user properties may not start with `_`.
//!
//! Two shapes exist so that the type system keeps the life cycle straight:
//! * [`MutableMessage`] — built by a producer, stamped by the WAL (timestamp, term,
//!   last-confirmed id, txn context) and consumed by `append`. It has no id.
//! * [`ImmutableMessage`] — what a log returns after the append: the same envelope plus its
//!   [`MessageId`]. It cannot be turned back into a mutable message, so it cannot be appended
//!   again, and there is no way to read a message that has no id.

mod envelope;
mod header;
mod immutable;
mod kind;
mod mutable;
mod props;
#[cfg(test)]
mod tests;
mod typed;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

pub use envelope::{Message, Properties};
pub use header::*;
pub use immutable::{ImmutableMessage, ImmutableTxnMessage};
pub use kind::{MESSAGE_VERSION, MessageType, keys};
pub use mutable::{MessageBuilder, MutableMessage};
pub use props::Packer;

use envelope::*;
use props::Props;
use typed::*;

use crate::channel::VChannel;
use crate::error::ParseError;
use crate::ids::{MessageId, Term, Timestamp};
