//! Promotion state and outcome, proto <-> domain, mapped here once so the
//! release service, the rollout service and the gateway cannot drift apart
//! (the wire enums add only `UNSPECIFIED`, which has no domain value).

use slipway_domain::promotion::{PromotionOutcome, PromotionState};

use crate::release::v1 as pb;
use crate::rollout::v1::RolloutPhase;

/// The outcome a rollout that ended in `phase` stands for (what the rollout
/// service reports and the gateway's result frame shows); `None` while the
/// rollout has not ended.
pub fn rollout_outcome(phase: RolloutPhase) -> Option<PromotionOutcome> {
    match phase {
        RolloutPhase::Running => Some(PromotionOutcome::Succeeded),
        RolloutPhase::Reverted => Some(PromotionOutcome::RolledBack),
        RolloutPhase::Failure => Some(PromotionOutcome::Failed),
        RolloutPhase::Cancelled => Some(PromotionOutcome::Cancelled),
        RolloutPhase::Unspecified
        | RolloutPhase::Pending
        | RolloutPhase::Updating
        | RolloutPhase::Reverting => None,
    }
}

impl From<PromotionState> for pb::PromotionState {
    fn from(state: PromotionState) -> Self {
        match state {
            PromotionState::Pending => Self::Pending,
            PromotionState::RollingOut => Self::RollingOut,
            PromotionState::Succeeded => Self::Succeeded,
            PromotionState::RolledBack => Self::RolledBack,
            PromotionState::Failed => Self::Failed,
            PromotionState::Cancelled => Self::Cancelled,
        }
    }
}

/// A wire value with no domain meaning (`UNSPECIFIED`, or a number this
/// build does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unspecified or unknown {what} {value}")]
pub struct Unspecified {
    /// Which enum the value was for.
    pub what: &'static str,
    /// The value on the wire.
    pub value: i32,
}

impl TryFrom<pb::PromotionState> for PromotionState {
    type Error = Unspecified;

    fn try_from(state: pb::PromotionState) -> Result<Self, Unspecified> {
        Ok(match state {
            pb::PromotionState::Pending => Self::Pending,
            pb::PromotionState::RollingOut => Self::RollingOut,
            pb::PromotionState::Succeeded => Self::Succeeded,
            pb::PromotionState::RolledBack => Self::RolledBack,
            pb::PromotionState::Failed => Self::Failed,
            pb::PromotionState::Cancelled => Self::Cancelled,
            pb::PromotionState::Unspecified => {
                return Err(Unspecified {
                    what: "promotion state",
                    value: state as i32,
                });
            }
        })
    }
}

impl From<PromotionOutcome> for pb::PromotionOutcome {
    fn from(outcome: PromotionOutcome) -> Self {
        match outcome {
            PromotionOutcome::Succeeded => Self::Succeeded,
            PromotionOutcome::RolledBack => Self::RolledBack,
            PromotionOutcome::Failed => Self::Failed,
            PromotionOutcome::Cancelled => Self::Cancelled,
        }
    }
}

impl TryFrom<pb::PromotionOutcome> for PromotionOutcome {
    type Error = Unspecified;

    fn try_from(outcome: pb::PromotionOutcome) -> Result<Self, Unspecified> {
        Ok(match outcome {
            pb::PromotionOutcome::Succeeded => Self::Succeeded,
            pb::PromotionOutcome::RolledBack => Self::RolledBack,
            pb::PromotionOutcome::Failed => Self::Failed,
            pb::PromotionOutcome::Cancelled => Self::Cancelled,
            pb::PromotionOutcome::Unspecified => {
                return Err(Unspecified {
                    what: "promotion outcome",
                    value: outcome as i32,
                });
            }
        })
    }
}

/// The domain state of a message's `state` field (an `i32` on the wire).
pub fn promotion_state(value: i32) -> Result<PromotionState, Unspecified> {
    pb::PromotionState::try_from(value)
        .map_err(|_| Unspecified {
            what: "promotion state",
            value,
        })?
        .try_into()
}

/// The domain outcome of a message's `outcome` field (an `i32` on the wire).
pub fn promotion_outcome(value: i32) -> Result<PromotionOutcome, Unspecified> {
    pb::PromotionOutcome::try_from(value)
        .map_err(|_| Unspecified {
            what: "promotion outcome",
            value,
        })?
        .try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_and_keeps_its_wire_name() {
        for state in PromotionState::ALL {
            let wire = pb::PromotionState::from(state);
            assert_eq!(PromotionState::try_from(wire), Ok(state));
            assert_eq!(promotion_state(wire as i32), Ok(state));
            // PROMOTION_STATE_ROLLING_OUT <-> "rolling_out", and so on.
            assert_eq!(
                wire.as_str_name(),
                format!("PROMOTION_STATE_{}", state.as_str().to_uppercase())
            );
        }
        assert!(promotion_state(pb::PromotionState::Unspecified as i32).is_err());
        assert!(promotion_state(99).is_err());
    }

    #[test]
    fn only_the_terminal_rollout_phases_have_an_outcome() {
        assert_eq!(
            rollout_outcome(RolloutPhase::Running),
            Some(PromotionOutcome::Succeeded)
        );
        assert_eq!(
            rollout_outcome(RolloutPhase::Reverted),
            Some(PromotionOutcome::RolledBack)
        );
        assert_eq!(
            rollout_outcome(RolloutPhase::Failure),
            Some(PromotionOutcome::Failed)
        );
        assert_eq!(
            rollout_outcome(RolloutPhase::Cancelled),
            Some(PromotionOutcome::Cancelled)
        );
        for running in [
            RolloutPhase::Unspecified,
            RolloutPhase::Pending,
            RolloutPhase::Updating,
            RolloutPhase::Reverting,
        ] {
            assert_eq!(rollout_outcome(running), None, "{running:?}");
        }
    }

    #[test]
    fn every_outcome_round_trips_to_its_terminal_state() {
        for outcome in [
            PromotionOutcome::Succeeded,
            PromotionOutcome::RolledBack,
            PromotionOutcome::Failed,
            PromotionOutcome::Cancelled,
        ] {
            let wire = pb::PromotionOutcome::from(outcome);
            assert_eq!(PromotionOutcome::try_from(wire), Ok(outcome));
            assert_eq!(promotion_outcome(wire as i32), Ok(outcome));
            assert_eq!(
                wire.as_str_name(),
                format!(
                    "PROMOTION_OUTCOME_{}",
                    outcome.into_state().as_str().to_uppercase()
                )
            );
        }
        assert!(promotion_outcome(0).is_err());
        assert!(promotion_outcome(-1).is_err());
    }
}
