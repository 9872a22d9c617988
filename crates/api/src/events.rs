//! A rollout event as one printed line, in the seed's form
//! `<RFC 3339 time> <source> <message>\n`: what the gateway's event and log
//! sockets send, what `slipway releases promote` prints, and what the web
//! console streams, from this one function so the three never drift.

use chrono::SecondsFormat;

use crate::rollout::v1::Event;

/// One event line, newline included.
pub fn event_line(event: &Event) -> String {
    // An unset time prints as the earliest time there is, as it always has.
    let at = match event.time.as_ref().filter(|t| t.seconds > 0) {
        Some(t) => crate::from_timestamp(t),
        None => chrono::DateTime::<chrono::Utc>::MIN_UTC,
    }
    .to_rfc3339_opts(SecondsFormat::Secs, true);
    format!("{at} {} {}\n", event.source, event.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_time_source_message() {
        let event = Event {
            id: "1-0".into(),
            time: Some(prost_types::Timestamp {
                seconds: 1_763_886_846,
                nanos: 5,
            }),
            app: "myapp".into(),
            source: "system/local/web".into(),
            message: "Process web-a0e812b7 exited with status 3".into(),
        };
        assert_eq!(
            event_line(&event),
            "2025-11-23T08:34:06Z system/local/web Process web-a0e812b7 exited with status 3\n"
        );
        let unset = Event {
            time: None,
            ..event
        };
        assert!(
            event_line(&unset)
                .ends_with(" system/local/web Process web-a0e812b7 exited with status 3\n")
        );
    }
}
