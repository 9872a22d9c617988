//! The body of a delivery: Convox's `{action, status, timestamp, data{app,
//! rack, actor, id, message}}`, plus `delivery_id` (stable across retries,
//! for deduplication) and `event_id` at the top level, which Convox
//! receivers ignore. Rendered from the outbox row at send time; the same
//! row gives the same bytes on every attempt.

use serde_json::json;

use super::Event;

/// Header carrying the delivery id (also the body's `delivery_id`).
pub const DELIVERY_HEADER: &str = "Slipway-Delivery";

/// The JSON body of `event` for delivery `delivery_id` from rack `rack`.
pub fn body(event: &Event, delivery_id: &str, rack: &str) -> Vec<u8> {
    let timestamp = chrono::DateTime::from_timestamp_micros(event.at_micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let value = json!({
        "action": event.action,
        "status": event.status,
        "timestamp": timestamp,
        "data": {
            "app": event.app,
            "rack": rack,
            "actor": event.actor,
            "id": event.subject,
            "message": event.message,
        },
        "delivery_id": delivery_id,
        "event_id": event.id,
    });
    serde_json::to_vec(&value).expect("a JSON value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convox_shape_with_a_stable_delivery_id() {
        let event = Event {
            id: "E1".into(),
            action: "app:promote:errored".into(),
            status: "error".into(),
            app: "web".into(),
            actor: "token:ci".into(),
            subject: "P0".into(),
            message: "health check failed".into(),
            at_micros: 1_714_233_600_000_001,
        };
        let first = body(&event, "E1-W1", "prod");
        assert_eq!(first, body(&event, "E1-W1", "prod"));
        let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(v["action"], "app:promote:errored");
        assert_eq!(v["status"], "error");
        assert_eq!(v["timestamp"], "2024-04-27T16:00:00.000001000Z");
        assert_eq!(v["data"]["app"], "web");
        assert_eq!(v["data"]["rack"], "prod");
        assert_eq!(v["data"]["actor"], "token:ci");
        assert_eq!(v["data"]["id"], "P0");
        assert_eq!(v["data"]["message"], "health check failed");
        assert_eq!(v["delivery_id"], "E1-W1");
    }
}
