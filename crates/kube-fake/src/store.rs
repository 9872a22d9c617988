//! The fake API server's object store: every object as JSON, a global
//! resourceVersion counter, the change history that watches replay (with a
//! compaction floor: older versions are `410 Gone`), server-side apply
//! merging, `metadata.generation` bumps on spec changes, the status
//! subresource split, schema validation of every write, graceful deletion
//! of pods and garbage collection of dependents (by `ownerReferences`).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// A resource the fake serves: (plural, API group path, kind, namespaced).
pub(crate) const RESOURCES: &[(&str, &str, &str, bool)] = &[
    ("namespaces", "v1", "Namespace", false),
    ("secrets", "v1", "Secret", true),
    ("services", "v1", "Service", true),
    ("pods", "v1", "Pod", true),
    ("events", "v1", "Event", true),
    ("deployments", "apps/v1", "Deployment", true),
    ("replicasets", "apps/v1", "ReplicaSet", true),
    (
        "networkpolicies",
        "networking.k8s.io/v1",
        "NetworkPolicy",
        true,
    ),
];

/// Looks a resource up by plural.
pub(crate) fn resource(plural: &str) -> Option<(&'static str, &'static str, &'static str, bool)> {
    RESOURCES.iter().copied().find(|r| r.0 == plural)
}

/// An object's address: (resource, namespace or "", name).
pub(crate) type Key = (String, String, String);

/// One change, as watches stream it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    /// The resourceVersion the change produced.
    pub(crate) rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub(crate) kind: &'static str,
    /// Which object.
    pub(crate) key: Key,
    /// The object after the change (before, for DELETED).
    pub(crate) object: Value,
}

/// A failed request, as the API's `Status` object.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub(crate) code: u16,
    /// `Status.reason`.
    pub(crate) reason: &'static str,
    /// `Status.message`.
    pub(crate) message: String,
    /// The invalid field (422).
    pub(crate) field: Option<String>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            field: None,
        }
    }

    pub(crate) fn not_found(key: &Key) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", key.0, key.2),
        )
    }

    pub(crate) fn invalid(key: &Key, field: &str, message: &str) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::new(
                422,
                "Invalid",
                format!("{} \"{}\" is invalid: {field}: {message}", key.0, key.2),
            )
        }
    }

    /// The `Status` body.
    pub(crate) fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(field) = &self.field {
            status["details"] = json!({"causes": [{"reason": "FieldValueInvalid", "message": self.message, "field": field}]});
        }
        status
    }
}

/// Everything the fake holds.
pub(crate) struct Store {
    /// The last resourceVersion handed out.
    pub(crate) rv: u64,
    /// Objects by key.
    pub(crate) objects: BTreeMap<Key, Value>,
    /// Changes after `floor`, oldest first.
    pub(crate) history: VecDeque<Change>,
    /// Watches from a version below this get 410 Gone.
    pub(crate) floor: u64,
    /// The last applied configuration per object and field manager.
    pub(crate) applied: BTreeMap<(Key, String), Value>,
    /// Where changes go live.
    pub(crate) changes: broadcast::Sender<Change>,
    /// The events the controllers recorded, by subject (namespace,
    /// involved kind and name, reason, message), for the server's
    /// deduplication; an entry whose event is gone is stale and ignored.
    pub(crate) event_subjects: HashMap<EventSubject, Key>,
    uid: u64,
}

/// What makes two events the same for deduplication: namespace, involved
/// object's kind and name, reason, message.
pub(crate) type EventSubject = (String, String, String, String, String);

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Records that `manager` applied just now (`managedFields`; the field
/// set itself is not modelled).
fn set_managed(object: &mut Value, manager: &str) {
    let api_version = object["apiVersion"].clone();
    object["metadata"]["managedFields"] = json!([{
        "manager": manager, "operation": "Apply", "apiVersion": api_version,
        "time": now(), "fieldsType": "FieldsV1", "fieldsV1": {},
    }]);
}

/// Deep-merges `patch` into `target`: objects by key, everything else replaced.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Removes from `target` the fields `old` set that `new` no longer sets
/// (server-side apply: a field left out of an apply is given up).
fn prune(target: &mut Value, old: &Value, new: &Value) {
    let (Value::Object(t), Value::Object(o)) = (target, old) else {
        return;
    };
    let empty = Map::new();
    let n = new.as_object().unwrap_or(&empty);
    for (k, ov) in o {
        match n.get(k) {
            None => {
                t.remove(k);
            }
            Some(nv) => {
                if let Some(tv) = t.get_mut(k) {
                    prune(tv, ov, nv);
                }
            }
        }
    }
}

impl Store {
    pub(crate) fn new() -> Self {
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            floor: 1,
            applied: BTreeMap::new(),
            changes: broadcast::channel(4096).0,
            event_subjects: HashMap::new(),
            uid: 0,
        }
    }

    /// Records `object` under `key` as a new version and tells watchers.
    pub(crate) fn commit(&mut self, kind: &'static str, key: Key, mut object: Value) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if kind == "DELETED" {
            self.objects.remove(&key);
            self.applied.retain(|(k, _), _| k != &key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        let change = Change {
            rv: self.rv,
            kind,
            key,
            object: object.clone(),
        };
        self.history.push_back(change.clone());
        let _ = self.changes.send(change);
        object
    }

    /// Fills in what the server sets on create.
    pub(crate) fn stamp_new(&mut self, resource: &str, object: &mut Value) {
        self.uid += 1;
        let meta = &mut object["metadata"];
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
        // Milliseconds, so that pods can be timed finer than a second
        // (`slow-250ms`); RFC 3339 either way.
        meta["creationTimestamp"] =
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        if resource == "deployments" {
            meta["generation"] = json!(1);
        }
        if resource == "namespaces" {
            object["status"] = json!({"phase": "Active"});
        }
    }

    /// Checks a namespaced object may be created in `ns`.
    pub(crate) fn namespace_writable(&self, ns: &str) -> Result<(), ApiError> {
        let key = ("namespaces".to_owned(), String::new(), ns.to_owned());
        match self.objects.get(&key) {
            None => Err(ApiError::not_found(&key)),
            Some(n) if n["metadata"]["deletionTimestamp"].is_string() => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Field validation `Strict`: the body against its schema.
    fn check_schema(key: &Key, body: &Value) -> Result<(), ApiError> {
        let (_, _, kind, _) = resource(&key.0).expect("served resources have a kind");
        if body["kind"].as_str().is_some_and(|k| k != kind) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("the body is a {}, not a {kind}", body["kind"]),
            ));
        }
        crate::schema::validate(kind, body).map_err(|e| {
            let mut err = ApiError::new(
                400,
                "BadRequest",
                format!("{} \"{}\" is invalid: {e}", kind, key.2),
            );
            err.field = Some(e.field.trim_start_matches('.').to_owned());
            err
        })
    }

    /// Validation the real API does on the objects the backend writes.
    fn validate(key: &Key, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
        if key.0 == "deployments" {
            if old.is_some_and(|old| old["spec"]["selector"] != new["spec"]["selector"]) {
                return Err(ApiError::invalid(
                    key,
                    "spec.selector",
                    "field is immutable",
                ));
            }
            let ru = &new["spec"]["strategy"]["rollingUpdate"];
            let zero = |v: &Value| v == &json!(0) || v == &json!("0%");
            if zero(&ru["maxSurge"]) && zero(&ru["maxUnavailable"]) {
                return Err(ApiError::invalid(
                    key,
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
            let labels = &new["spec"]["template"]["metadata"]["labels"];
            let selector = new["spec"]["selector"]["matchLabels"].as_object();
            if selector.is_some_and(|sel| sel.iter().any(|(k, v)| &labels[k] != v)) {
                return Err(ApiError::invalid(
                    key,
                    "spec.template.metadata.labels",
                    "`selector` does not match template `labels`",
                ));
            }
        }
        if key.0 == "secrets" {
            use base64::Engine as _;
            for (k, v) in new["data"].as_object().into_iter().flatten() {
                let ok = v
                    .as_str()
                    .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                if !ok {
                    return Err(ApiError::invalid(
                        key,
                        &format!("data[{k}]"),
                        "illegal base64 data",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Server-side apply of `body` by `manager`.
    pub(crate) fn apply(
        &mut self,
        key: Key,
        manager: &str,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        if body["metadata"]["name"].as_str() != Some(key.2.as_str()) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            ));
        }
        Self::check_schema(&key, &body)?;
        if !key.1.is_empty() {
            self.namespace_writable(&key.1)?;
        }
        // The status subresource: the main endpoint ignores status.
        if let Some(obj) = body.as_object_mut() {
            obj.remove("status");
        }
        let applied_key = (key.clone(), manager.to_owned());
        let existing = self.objects.get(&key).cloned();
        let Some(old) = existing else {
            Self::validate(&key, None, &body)?;
            let mut object = body.clone();
            self.stamp_new(&key.0, &mut object);
            set_managed(&mut object, manager);
            self.applied.insert(applied_key, body);
            return Ok(self.commit("ADDED", key, object));
        };
        let mut object = old.clone();
        if let Some(previous) = self.applied.get(&applied_key) {
            prune(&mut object, previous, &body);
        }
        merge(&mut object, &body);
        Self::validate(&key, Some(&old), &object)?;
        self.applied.insert(applied_key, body);
        if object == old {
            return Ok(old);
        }
        if key.0 == "deployments" && object["spec"] != old["spec"] {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        set_managed(&mut object, manager);
        Ok(self.commit("MODIFIED", key, object))
    }

    /// PUT: replace with a resourceVersion precondition; `status` replaces
    /// only the status, otherwise everything but the status.
    pub(crate) fn replace(
        &mut self,
        key: Key,
        status_only: bool,
        body: Value,
    ) -> Result<Value, ApiError> {
        Self::check_schema(&key, &body)?;
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&key))?;
        let current = old["metadata"]["resourceVersion"].as_str();
        let given = body["metadata"]["resourceVersion"].as_str();
        if given.is_some() && given != current {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    key.0, key.2
                ),
            ));
        }
        let mut object = old.clone();
        if status_only {
            object["status"] = body["status"].clone();
        } else {
            let status = old["status"].clone();
            object = body;
            object["metadata"]["uid"] = old["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            object["metadata"]["generation"] = old["metadata"]["generation"].clone();
            object["status"] = status;
            Self::validate(&key, Some(&old), &object)?;
            if key.0 == "deployments" && object["spec"] != old["spec"] {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                object["metadata"]["generation"] = json!(generation);
            }
        }
        Ok(self.commit("MODIFIED", key, object))
    }

    /// POST: create, 409 if it exists.
    pub(crate) fn create(&mut self, key: Key, mut body: Value) -> Result<Value, ApiError> {
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", key.0, key.2),
            ));
        }
        Self::check_schema(&key, &body)?;
        if !key.1.is_empty() {
            self.namespace_writable(&key.1)?;
        }
        Self::validate(&key, None, &body)?;
        self.stamp_new(&key.0, &mut body);
        Ok(self.commit("ADDED", key, body))
    }

    /// DELETE: a namespace turns `Terminating` (the namespace controller
    /// finishes it); a pod gets a `deletionTimestamp` and stays, stopping,
    /// until the kubelet sees it gone (`grace` 0 removes it at once);
    /// anything else goes at once, with its dependents (background
    /// propagation: ReplicaSets of a Deployment, pods of a ReplicaSet).
    pub(crate) fn delete_with(&mut self, key: Key, grace: Option<i64>) -> Result<Value, ApiError> {
        let mut object = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&key))?;
        if key.0 == "namespaces" {
            if !object["metadata"]["deletionTimestamp"].is_string() {
                object["metadata"]["deletionTimestamp"] = json!(now());
                object["status"]["phase"] = json!("Terminating");
                return Ok(self.commit("MODIFIED", key, object));
            }
            return Ok(object);
        }
        if key.0 == "pods" && grace != Some(0) {
            if object["metadata"]["deletionTimestamp"].is_string() {
                return Ok(object);
            }
            let grace = grace
                .or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30);
            // The time it will be killed at, as the real API sets it.
            let kill = chrono::Utc::now() + chrono::Duration::seconds(grace);
            object["metadata"]["deletionTimestamp"] =
                json!(kill.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            return Ok(self.commit("MODIFIED", key, object));
        }
        let uid = object["metadata"]["uid"].clone();
        let gone = self.commit("DELETED", key.clone(), object);
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, v)| {
                k.1 == key.1
                    && v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|o| o.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for dependent in dependents {
            let _ = self.delete_with(dependent, None);
        }
        Ok(gone)
    }

    /// DELETE with the object's own grace period.
    pub(crate) fn delete(&mut self, key: Key) -> Result<Value, ApiError> {
        self.delete_with(key, None)
    }

    /// Removes terminating namespaces and everything in them.
    pub(crate) fn finalize_namespaces(&mut self) {
        let doomed: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, v)| k.0 == "namespaces" && v["metadata"]["deletionTimestamp"].is_string())
            .map(|(k, _)| k.clone())
            .collect();
        for ns in doomed {
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.1 == ns.2)
                .cloned()
                .collect();
            for key in inside {
                let object = self.objects[&key].clone();
                self.commit("DELETED", key, object);
            }
            let object = self.objects[&ns].clone();
            self.commit("DELETED", ns, object);
        }
    }

    /// Objects of `resource` in `ns` ("" = all) matching a label selector.
    pub(crate) fn list(&self, resource: &str, ns: &str, selector: &str) -> Vec<Value> {
        self.list_fields(resource, ns, selector, "")
    }

    /// Objects of `resource` in `ns` matching a label and a field selector.
    pub(crate) fn list_fields(
        &self,
        resource: &str,
        ns: &str,
        selector: &str,
        fields: &str,
    ) -> Vec<Value> {
        self.in_namespace(resource, ns)
            .filter(|(k, _)| k.0 == resource && (ns.is_empty() || k.1 == ns))
            .filter(|(_, v)| matches_selector(v, selector) && matches_fields(v, fields))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Objects of `resource` in `ns` ("" = every namespace), by key range.
    pub(crate) fn in_namespace<'a>(
        &'a self,
        resource: &str,
        ns: &str,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        let from: Key = (resource.to_owned(), ns.to_owned(), String::new());
        let to: Key = if ns.is_empty() {
            (format!("{resource}\0"), String::new(), String::new())
        } else {
            (resource.to_owned(), format!("{ns}\0"), String::new())
        };
        self.objects.range(from..to)
    }

    /// Drops the history: watches from before now get 410 Gone.
    pub(crate) fn compact(&mut self) {
        self.floor = self.rv;
        self.history.clear();
    }
}

/// Splits a selector at the commas outside parentheses.
fn terms(selector: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&selector[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether `object`'s labels match a label selector: `k=v`, `k==v`,
/// `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`.
pub(crate) fn matches_selector(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    terms(selector).into_iter().all(|term| {
        let set = |rest: &str| -> Vec<String> {
            rest.trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .map(|v| v.trim().to_owned())
                .collect()
        };
        if let Some((k, rest)) = term.split_once(" notin ") {
            let v = labels[k.trim()].as_str();
            return v.is_none_or(|v| !set(rest).iter().any(|s| s == v));
        }
        if let Some((k, rest)) = term.split_once(" in ") {
            let v = labels[k.trim()].as_str();
            return v.is_some_and(|v| set(rest).iter().any(|s| s == v));
        }
        if let Some((k, v)) = term.split_once("!=") {
            return labels[k.trim()].as_str() != Some(v.trim());
        }
        if let Some((k, v)) = term.split_once('=') {
            return labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim());
        }
        if let Some(k) = term.strip_prefix('!') {
            return !labels[k.trim()].is_string();
        }
        labels[term].is_string()
    })
}

/// Whether `object` matches a field selector: `path=v`, `path==v`,
/// `path!=v`, with dotted paths (`metadata.name`, `involvedObject.uid`).
pub(crate) fn matches_fields(object: &Value, selector: &str) -> bool {
    terms(selector).into_iter().all(|term| {
        let (path, want, equal) = match term.split_once("!=") {
            Some((p, v)) => (p, v, false),
            None => match term.split_once('=') {
                Some((p, v)) => (p, v.trim_start_matches('='), true),
                None => return false,
            },
        };
        let mut at = object;
        for part in path.trim().split('.') {
            at = &at[part];
        }
        let have = match at {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        (have == want.trim()) == equal
    })
}
