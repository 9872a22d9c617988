//! How a publisher speaks of a bus outage: a warning when it begins, a
//! reminder at most once per [`REMIND`] while it lasts, a line when it
//! ends. One log line per outage, not per event, whichever service
//! publishes (rollout events, build logs).

use std::time::{Duration, Instant};

/// While the bus stays down, a reminder at most this often.
pub const REMIND: Duration = Duration::from_secs(60);

/// What to say about a failed publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The bus just went down: warn.
    Began,
    /// Still down, and the last word was [`REMIND`] ago or more: remind.
    Continues {
        /// How long it has been down.
        down_for: Duration,
    },
    /// Still down; said recently.
    Quiet,
}

/// One publisher's view of the bus: up, or down since when.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outage {
    down: Option<Down>,
}

#[derive(Clone, Copy, Debug)]
struct Down {
    since: Instant,
    said: Instant,
}

impl Outage {
    /// Whether the last publish failed.
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }

    /// A publish failed at `now`: what to say.
    pub fn failed(&mut self, now: Instant) -> Notice {
        match &mut self.down {
            None => {
                self.down = Some(Down {
                    since: now,
                    said: now,
                });
                Notice::Began
            }
            Some(down) if now >= down.said + REMIND => {
                down.said = now;
                Notice::Continues {
                    down_for: now - down.since,
                }
            }
            Some(_) => Notice::Quiet,
        }
    }

    /// A publish succeeded: how long the outage that ended lasted, if one did.
    pub fn succeeded(&mut self) -> Option<Duration> {
        self.down.take().map(|down| down.since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_said_once_then_reminded_then_ended() {
        let t0 = Instant::now();
        let mut outage = Outage::default();
        assert!(!outage.is_down());
        assert_eq!(outage.failed(t0), Notice::Began);
        assert_eq!(outage.failed(t0 + Duration::from_secs(1)), Notice::Quiet);
        assert_eq!(
            outage.failed(t0 + REMIND),
            Notice::Continues { down_for: REMIND }
        );
        assert_eq!(
            outage.failed(t0 + REMIND + Duration::from_secs(1)),
            Notice::Quiet
        );
        assert!(outage.succeeded().is_some());
        assert_eq!(outage.succeeded(), None, "nothing ends twice");
        assert_eq!(
            outage.failed(t0 + REMIND * 2),
            Notice::Began,
            "a new outage"
        );
    }
}
