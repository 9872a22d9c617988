//! The promotion state machine owned by the release service.
//!
//! Promoting a release creates a promotion that starts `pending`, moves to
//! `rolling_out` when the rollout begins, and ends `succeeded`, `rolled_back`, `failed`
//! or `cancelled`. Keeping the legal transitions here, rather than in SQL or handler
//! code, means every backend and every caller enforces the same rules, and an illegal
//! move (say, reviving a rolled-back promotion) is refused with a clear message.

use std::fmt;
use std::ops::RangeInclusive;

/// Allowed promotion deadlines, in seconds (30 s to 6 h): what a promotion
/// request may ask for and what a service's `--default-deadline` may be.
/// The one definition the release service, the rollout service and the
/// rack all check against.
pub const DEADLINE_RANGE: RangeInclusive<u32> = 30..=21_600;

/// Where a promotion is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PromotionState {
    /// Accepted but the rollout has not started yet.
    Pending,
    /// The rollout is replacing processes.
    RollingOut,
    /// Every process runs the new release.
    Succeeded,
    /// The rollout gave up and the previous release was restored.
    RolledBack,
    /// The promotion could not proceed (e.g. a required env var is missing) or the
    /// rollback itself failed.
    Failed,
    /// Withdrawn before anything of the new release started: before the
    /// rollout began, or during its release command.
    Cancelled,
}

impl PromotionState {
    /// Every state, in life-cycle order.
    pub const ALL: [PromotionState; 6] = [
        Self::Pending,
        Self::RollingOut,
        Self::Succeeded,
        Self::RolledBack,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The stable lower-case name used in storage, APIs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::RollingOut => "rolling_out",
            Self::Succeeded => "succeeded",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state named by `name` (as produced by [`PromotionState::as_str`]), if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }

    /// Whether the promotion has finished; a finished promotion never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::RolledBack | Self::Failed | Self::Cancelled
        )
    }

    /// Whether moving from `self` to `next` is allowed.
    ///
    /// `pending` may start rolling out, be cancelled, or fail (e.g. a missing env var
    /// found before anything is touched). `rolling_out` may succeed, roll back or fail,
    /// or be cancelled while its release command runs (nothing of the release has
    /// started then; the rollout service reports which).
    /// Terminal states, and staying in place, are never allowed.
    pub fn can_transition_to(self, next: Self) -> bool {
        matches!(
            (self, next),
            (
                Self::Pending,
                Self::RollingOut | Self::Cancelled | Self::Failed
            ) | (
                Self::RollingOut,
                Self::Succeeded | Self::RolledBack | Self::Failed | Self::Cancelled
            )
        )
    }

    /// Returns `next` if the move is allowed, or an error naming both states.
    pub fn transition(self, next: Self) -> Result<Self, TransitionError> {
        if self.can_transition_to(next) {
            Ok(next)
        } else {
            Err(TransitionError {
                from: self,
                to: next,
            })
        }
    }
}

impl fmt::Display for PromotionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An illegal promotion state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("promotion cannot go from {from} to {to}")]
pub struct TransitionError {
    /// The state the promotion was in.
    pub from: PromotionState,
    /// The state that was asked for.
    pub to: PromotionState,
}

/// How a rollout ended, as reported to the release service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromotionOutcome {
    /// The new release is running everywhere.
    Succeeded,
    /// The rollout was reverted to the previous release.
    RolledBack,
    /// The rollout, or its revert, failed.
    Failed,
    /// Cancelled before anything of the new release started (during its
    /// release command).
    Cancelled,
}

impl PromotionOutcome {
    /// The terminal promotion state this outcome leads to.
    pub fn into_state(self) -> PromotionState {
        match self {
            Self::Succeeded => PromotionState::Succeeded,
            Self::RolledBack => PromotionState::RolledBack,
            Self::Failed => PromotionState::Failed,
            Self::Cancelled => PromotionState::Cancelled,
        }
    }
}

impl From<PromotionOutcome> for PromotionState {
    fn from(outcome: PromotionOutcome) -> Self {
        outcome.into_state()
    }
}

/// The app status the Convox API reports given the app's open promotion, if any:
/// `updating` while a promotion is pending or rolling out, otherwise `running`.
pub fn app_status(open: Option<PromotionState>) -> &'static str {
    match open {
        Some(PromotionState::Pending | PromotionState::RollingOut) => "updating",
        _ => "running",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PromotionState::*;

    #[test]
    fn names_round_trip() {
        let names = [
            "pending",
            "rolling_out",
            "succeeded",
            "rolled_back",
            "failed",
            "cancelled",
        ];
        for (state, name) in PromotionState::ALL.into_iter().zip(names) {
            assert_eq!(state.as_str(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(PromotionState::parse(name), Some(state));
        }
    }

    #[test]
    fn parse_rejects_unknown_names() {
        for bad in [
            "",
            "Pending",
            "PENDING",
            "rolling-out",
            "rollingout",
            "done",
        ] {
            assert_eq!(PromotionState::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn terminal_states() {
        assert!(!Pending.is_terminal());
        assert!(!RollingOut.is_terminal());
        for state in [Succeeded, RolledBack, Failed, Cancelled] {
            assert!(state.is_terminal(), "{state}");
        }
    }

    #[test]
    fn full_transition_table() {
        let allowed = [
            (Pending, RollingOut),
            (Pending, Cancelled),
            (Pending, Failed),
            (RollingOut, Succeeded),
            (RollingOut, RolledBack),
            (RollingOut, Failed),
            (RollingOut, Cancelled),
        ];
        for from in PromotionState::ALL {
            for to in PromotionState::ALL {
                let expected = allowed.contains(&(from, to));
                assert_eq!(from.can_transition_to(to), expected, "{from} -> {to}");
                assert_eq!(from.transition(to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminal_states_go_nowhere() {
        for from in PromotionState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in PromotionState::ALL {
                assert!(!from.can_transition_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn transition_returns_next_state() {
        assert_eq!(Pending.transition(RollingOut), Ok(RollingOut));
        assert_eq!(RollingOut.transition(Succeeded), Ok(Succeeded));
    }

    #[test]
    fn transition_error_message() {
        let err = RolledBack.transition(Succeeded).unwrap_err();
        assert_eq!(err.from, RolledBack);
        assert_eq!(err.to, Succeeded);
        assert_eq!(
            err.to_string(),
            "promotion cannot go from rolled_back to succeeded"
        );
        assert_eq!(
            Pending.transition(Succeeded).unwrap_err().to_string(),
            "promotion cannot go from pending to succeeded"
        );
    }

    #[test]
    fn outcomes_map_to_terminal_states() {
        assert_eq!(PromotionOutcome::Succeeded.into_state(), Succeeded);
        assert_eq!(PromotionOutcome::RolledBack.into_state(), RolledBack);
        assert_eq!(PromotionState::from(PromotionOutcome::Failed), Failed);
        for outcome in [
            PromotionOutcome::Succeeded,
            PromotionOutcome::RolledBack,
            PromotionOutcome::Failed,
        ] {
            assert!(outcome.into_state().is_terminal());
            assert!(RollingOut.can_transition_to(outcome.into_state()));
        }
    }

    #[test]
    fn app_status_follows_the_open_promotion() {
        assert_eq!(app_status(None), "running");
        assert_eq!(app_status(Some(Pending)), "updating");
        assert_eq!(app_status(Some(RollingOut)), "updating");
        for state in [Succeeded, RolledBack, Failed, Cancelled] {
            assert_eq!(app_status(Some(state)), "running");
        }
    }
}
