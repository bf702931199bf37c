//! Message filters of a scanner, AND-combined.

use sluice_types::read::MessageFilter;
use sluice_types::{MessageType, Timestamp};

use crate::error::WalError;

/// The filters of one scanner, checked once at start.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filters {
    /// Lower bound on timestamps: `(bound, inclusive)`; the tightest of all time filters.
    min_ts: Option<(Timestamp, bool)>,
    /// Data types allowed by every `Types` filter (intersection); `None` = all.
    types: Option<Vec<MessageType>>,
}

impl Filters {
    /// Validates and combines filters.
    pub(crate) fn new(filters: &[MessageFilter]) -> Result<Filters, WalError> {
        let mut out = Filters::default();
        for f in filters {
            match f {
                MessageFilter::TimeTickGt(t) => out.tighten(*t, false),
                MessageFilter::TimeTickGte(t) => out.tighten(*t, true),
                MessageFilter::Types(types) => {
                    if let Some(sys) = types.iter().find(|t| t.is_system()) {
                        return Err(WalError::InvalidArgument(format!(
                            "a type filter cannot name the system message type {sys}: system \
                             messages always pass"
                        )));
                    }
                    out.types = Some(match out.types.take() {
                        None => types.clone(),
                        Some(prev) => prev.into_iter().filter(|t| types.contains(t)).collect(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn tighten(&mut self, t: Timestamp, inclusive: bool) {
        let tighter = match self.min_ts {
            None => true,
            Some((cur, cur_incl)) => t > cur || (t == cur && cur_incl && !inclusive),
        };
        if tighter {
            self.min_ts = Some((t, inclusive));
        }
    }

    /// Whether a message of this type passes the type filters.
    pub(crate) fn type_passes(&self, ty: MessageType) -> bool {
        ty.is_system()
            || match &self.types {
                None => true,
                Some(types) => types.contains(&ty),
            }
    }

    /// Whether a timestamp passes the time filters.
    pub(crate) fn time_passes(&self, ts: Timestamp) -> bool {
        match self.min_ts {
            None => true,
            Some((bound, true)) => ts >= bound,
            Some((bound, false)) => ts > bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_filter_naming_a_system_type_is_an_invalid_argument() {
        for sys in [
            MessageType::TimeTick,
            MessageType::BeginTxn,
            MessageType::CommitTxn,
            MessageType::RollbackTxn,
            MessageType::Txn,
        ] {
            let err =
                Filters::new(&[MessageFilter::Types(vec![MessageType::Insert, sys])]).unwrap_err();
            assert!(matches!(err, WalError::InvalidArgument(_)), "{err:?}");
        }
    }

    #[test]
    fn type_filters_intersect_and_system_types_always_pass() {
        let f = Filters::new(&[
            MessageFilter::Types(vec![MessageType::Insert, MessageType::Delete]),
            MessageFilter::Types(vec![MessageType::Delete, MessageType::Flush]),
        ])
        .unwrap();
        assert!(f.type_passes(MessageType::Delete));
        assert!(!f.type_passes(MessageType::Insert));
        assert!(!f.type_passes(MessageType::Flush));
        assert!(f.type_passes(MessageType::TimeTick));
        assert!(f.type_passes(MessageType::CommitTxn));
    }

    #[test]
    fn time_filters_combine_to_the_tightest_bound() {
        let f = Filters::new(&[
            MessageFilter::TimeTickGte(Timestamp(10)),
            MessageFilter::TimeTickGt(Timestamp(10)),
            MessageFilter::TimeTickGte(Timestamp(5)),
        ])
        .unwrap();
        assert!(!f.time_passes(Timestamp(10)));
        assert!(f.time_passes(Timestamp(11)));
        let f = Filters::new(&[MessageFilter::TimeTickGte(Timestamp(10))]).unwrap();
        assert!(f.time_passes(Timestamp(10)));
        assert!(!f.time_passes(Timestamp(9)));
        assert!(Filters::new(&[]).unwrap().time_passes(Timestamp::MIN));
    }
}
