//! Field validation against the real schemas: every body written to the
//! fake is decoded into its k8s-openapi type (generated from the API
//! server's OpenAPI document) and encoded back. A field the schema does not
//! declare disappears on the way, a field of the wrong type fails to
//! decode: either way the write is refused with 400, as a real API server
//! refuses it (server-side apply is always strict; other writes are with
//! `fieldValidation=Strict`, kubectl's default).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// Why a body does not fit its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The offending field, as a dotted path (`.spec.template.spec.foo`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(body: &Value) -> Result<Value, SchemaError> {
    let typed: T = serde_json::from_value(body.clone()).map_err(|e| SchemaError {
        field: String::new(),
        message: format!("strict decoding error: {e}"),
    })?;
    serde_json::to_value(typed).map_err(|e| SchemaError {
        field: String::new(),
        message: e.to_string(),
    })
}

/// Drops `null`s: the API treats an explicit null as an absent field.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The first field of `sent` that `back` does not have, or has otherwise.
fn first_difference(sent: &Value, back: &Value, path: &str) -> Option<SchemaError> {
    match (sent, back) {
        (Value::Object(s), Value::Object(b)) => {
            for (k, v) in s {
                let here = format!("{path}.{k}");
                match b.get(k) {
                    None => {
                        return Some(SchemaError {
                            field: here,
                            message: "field not declared in schema".to_owned(),
                        });
                    }
                    Some(bv) => {
                        if let Some(e) = first_difference(v, bv, &here) {
                            return Some(e);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(s), Value::Array(b)) if s.len() == b.len() => s
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (s, b))| first_difference(s, b, &format!("{path}[{i}]"))),
        // Numbers the schema holds as strings (quantities) and the like
        // come back in another form: only a changed value is an error.
        (s, b) if s == b => None,
        (Value::Number(n), Value::String(t)) if n.to_string() == *t => None,
        _ => Some(SchemaError {
            field: path.to_owned(),
            message: format!("invalid value {sent}"),
        }),
    }
}

/// Checks `body`, a `kind` object, against the schema.
pub fn validate(kind: &str, body: &Value) -> Result<(), SchemaError> {
    let body = without_nulls(body);
    let back = match kind {
        "Namespace" => round_trip::<Namespace>(&body),
        "Secret" => round_trip::<Secret>(&body),
        "Service" => round_trip::<Service>(&body),
        "Pod" => round_trip::<Pod>(&body),
        "Event" => round_trip::<Event>(&body),
        "Deployment" => round_trip::<Deployment>(&body),
        "ReplicaSet" => round_trip::<ReplicaSet>(&body),
        "NetworkPolicy" => round_trip::<NetworkPolicy>(&body),
        other => {
            return Err(SchemaError {
                field: ".kind".to_owned(),
                message: format!("the fake has no schema for {other}"),
            });
        }
    }?;
    match first_difference(&body, &without_nulls(&back), "") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(container: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "shop"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "shop"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 0}},
                "template": {"metadata": {"labels": {"app": "shop"}},
                             "spec": {"containers": [container]}},
            },
        })
    }

    #[test]
    fn a_valid_body_passes_and_a_misspelt_or_mistyped_field_is_named() {
        let ok = deployment(
            json!({"name": "web", "image": "i", "resources": {"requests": {"cpu": "500m"}}}),
        );
        assert_eq!(validate("Deployment", &ok), Ok(()));
        let typo = deployment(
            json!({"name": "web", "image": "i", "readinessProbe": {"httpGet": {"port": 80}, "periodSecond": 3}}),
        );
        let e = validate("Deployment", &typo).unwrap_err();
        assert_eq!(
            e.field,
            ".spec.template.spec.containers[0].readinessProbe.periodSecond"
        );
        let mistyped =
            deployment(json!({"name": "web", "image": "i", "ports": [{"containerPort": "80"}]}));
        assert!(validate("Deployment", &mistyped).is_err());
        let mut top = ok.clone();
        top["spec"]["progressDeadline"] = json!(60);
        assert_eq!(
            validate("Deployment", &top).unwrap_err().field,
            ".spec.progressDeadline"
        );
    }
}
