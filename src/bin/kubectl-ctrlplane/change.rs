//! What each write command sends: the few spec fields it sets, by
//! server-side apply with its own field manager, and the fields it removes
//! (or the annotation it sets), by a JSON merge patch that names only them.
//! Pure: the requests are built here and sent elsewhere.
//!
//! Why apply for setting and a patch for removing: a server-side apply
//! owns exactly the fields it sends, and a later apply by the same manager
//! that leaves one out removes it (or resets it to its default) unless
//! another manager owns it too. So every apply here sends again, with their
//! current values, the fields this manager already owns ([`apply_body`]):
//! `stop` and then `scale` must not start the Instance again. And removing
//! a field that a GitOps tool applied is impossible by apply; a merge patch
//! that sets it to null does exactly that and nothing else.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use ctrlplane_operator::api::{MAX_TTL_SECONDS, MIN_TTL_SECONDS};
use ctrlplane_operator::plan::delivery::REDELIVER_ANNOTATION;
use serde_json::{Map, Value, json};

use crate::duration;
use crate::error::CliError;
use crate::target::Kind;

/// The field manager of every write: `kubectl get -o yaml
/// --show-managed-fields` shows which fields the plugin set.
pub const FIELD_MANAGER: &str = "kubectl-ctrlplane";

/// The spec fields the plugin sets by server-side apply, per kind.
pub fn applied_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Instance => &["state", "replicas", "suspend", "restartedAt"],
        Kind::Sandbox => &["state", "restartedAt", "ttlSeconds", "expiresAt"],
        Kind::Webhook | Kind::WebhookDelivery => &[],
    }
}

/// Which of [`applied_fields`] this plugin's field manager owns through
/// server-side apply, read from the object's `metadata.managedFields`.
pub fn owned_fields(kind: Kind, object: &Value) -> BTreeSet<&'static str> {
    let entries = object["metadata"]["managedFields"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ours = entries.iter().filter(|entry| {
        entry["manager"] == FIELD_MANAGER
            && entry["operation"] == "Apply"
            && entry["subresource"].as_str().unwrap_or_default().is_empty()
    });
    let mut owned = BTreeSet::new();
    for entry in ours {
        let spec = &entry["fieldsV1"]["f:spec"];
        for field in applied_fields(kind) {
            if spec.get(format!("f:{field}")).is_some() {
                owned.insert(*field);
            }
        }
    }
    owned
}

/// The applied configuration of a server-side apply that sets `change`:
/// the fields this manager owns already, with their current values, then
/// the change; and the resourceVersion it was read at, so that a write in
/// between is a conflict (and the command reads again) rather than being
/// undone, and so that an object deleted in between is not made anew.
pub fn apply_body(kind: Kind, object: &Value, change: &Map<String, Value>) -> Value {
    let mut spec = Map::new();
    for field in owned_fields(kind, object) {
        if let Some(value) = object["spec"].get(field).filter(|v| !v.is_null()) {
            spec.insert(field.to_string(), value.clone());
        }
    }
    for (field, value) in change {
        spec.insert(field.clone(), value.clone());
    }
    let mut metadata = Map::new();
    metadata.insert("name".into(), object["metadata"]["name"].clone());
    if let Some(version) = object["metadata"]["resourceVersion"].as_str() {
        metadata.insert("resourceVersion".into(), version.into());
    }
    json!({
        "apiVersion": "ctrlplane.dev/v1alpha1",
        "kind": kind.name(),
        "metadata": metadata,
        "spec": spec,
    })
}

fn one(field: &str, value: Value) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(field.into(), value);
    map
}

/// A timestamp as the API stores it; `precise` keeps milliseconds, so two
/// requests in the same second are still two values.
pub fn timestamp(at: DateTime<Utc>, precise: bool) -> String {
    let format = if precise {
        SecondsFormat::Millis
    } else {
        SecondsFormat::Secs
    };
    at.to_rfc3339_opts(format, true)
}

/// `start` / `stop`: `spec.state`.
pub fn state(running: bool) -> Map<String, Value> {
    one("state", json!(if running { "Running" } else { "Stopped" }))
}

/// `scale`: `spec.replicas`.
pub fn replicas(count: u32) -> Map<String, Value> {
    one("replicas", json!(count))
}

/// `suspend`: `spec.suspend.reason`.
pub fn suspend(reason: &str) -> Map<String, Value> {
    one("suspend", json!({ "reason": reason }))
}

/// `restart`: a new `spec.restartedAt`, which rolls every replica once (an
/// Instance) or makes a new pod (a Sandbox).
pub fn restart(now: DateTime<Utc>) -> Map<String, Value> {
    one("restartedAt", json!(timestamp(now, true)))
}

/// `resume`: removes `spec.suspend`, and nothing else. Refused when the
/// Instance is not suspended; the warning says when it stays stopped anyway.
pub fn resume(kind: Kind, name: &str, spec: &Value) -> Result<(Value, Option<String>), CliError> {
    if spec.get("suspend").is_none_or(Value::is_null) {
        return Err(CliError::Message(format!(
            "{} is not suspended",
            kind.object(name)
        )));
    }
    let warning = (spec["state"] == "Stopped").then(|| {
        format!(
            "spec.state is Stopped, so {name} stays stopped: `kubectl ctrlplane start inst/{name}` runs it"
        )
    });
    Ok((json!({ "spec": { "suspend": null } }), warning))
}

/// A warning for `start` of a suspended Instance, which does not run until
/// it is resumed.
pub fn start_warning(kind: Kind, name: &str, spec: &Value) -> Option<String> {
    let reason = spec["suspend"]["reason"].as_str()?;
    (kind == Kind::Instance).then(|| {
        format!(
            "{name} is suspended ({reason:?}) and stays stopped until `kubectl ctrlplane resume inst/{name}`"
        )
    })
}

/// `expire`: the deadline becomes now, as `spec.expiresAt`, and
/// `spec.ttlSeconds` goes in the same patch (the two are one-of).
pub fn expire(now: DateTime<Utc>) -> Value {
    json!({ "spec": { "expiresAt": timestamp(now, false), "ttlSeconds": null } })
}

/// `extend --ttl D`: the deadline moves to now + D, in the field the
/// Sandbox already uses. `ttlSeconds` counts from creation, so it becomes
/// the sandbox's age plus D; `expiresAt` becomes now + D. Keeping to the
/// field the owner chose means the change touches one field, and a GitOps
/// tool that syncs that field back only puts its own value back: switching
/// to the other field would leave the object with both once it does, which
/// the API refuses (they are one-of). A Sandbox with neither does not
/// expire, and has nothing to extend.
///
/// Returns the change and the new deadline.
pub fn extend(
    kind_name: &str,
    spec: &Value,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<(Map<String, Value>, DateTime<Utc>), CliError> {
    let (min, max) = (MIN_TTL_SECONDS as u64, MAX_TTL_SECONDS as u64);
    if ttl.as_secs() < min
        || ttl.as_secs() > max
        || (ttl.as_secs() == max && ttl.subsec_nanos() > 0)
    {
        return Err(CliError::Usage(format!(
            "--ttl {} is out of range: a Sandbox lives between 1m and 720h (30 days)",
            duration::format_go(ttl)
        )));
    }
    let ttl_chrono = chrono::Duration::from_std(ttl).unwrap_or_default();
    let deadline = now + ttl_chrono;
    if spec.get("ttlSeconds").is_some_and(|v| !v.is_null()) {
        let seconds = (deadline - created).num_milliseconds().div_euclid(1000)
            + i64::from((deadline - created).num_milliseconds().rem_euclid(1000) > 0);
        if seconds > MAX_TTL_SECONDS {
            let most = MAX_TTL_SECONDS - (now - created).num_seconds();
            return Err(CliError::Message(format!(
                "{kind_name} has spec.ttlSeconds, which counts from its creation and may be at most {MAX_TTL_SECONDS} (720h): it can be extended by at most {} now",
                duration::format_go(Duration::from_secs(most.max(0) as u64))
            )));
        }
        let deadline = created + chrono::Duration::seconds(seconds);
        return Ok((one("ttlSeconds", json!(seconds)), deadline));
    }
    if spec.get("expiresAt").is_some_and(|v| !v.is_null()) {
        let deadline = DateTime::from_timestamp(deadline.timestamp(), 0).unwrap_or(deadline);
        return Ok((
            one("expiresAt", json!(timestamp(deadline, false))),
            deadline,
        ));
    }
    Err(CliError::Message(format!(
        "{kind_name} has neither spec.ttlSeconds nor spec.expiresAt: it does not expire, so there is nothing to extend"
    )))
}

/// `redeliver`: the annotation that asks the operator to send a completed
/// delivery again, with the time (to the microsecond: it must be later than
/// the record's completion).
pub fn redeliver(now: DateTime<Utc>) -> Value {
    json!({
        "metadata": {
            "annotations": {
                REDELIVER_ANNOTATION: now.to_rfc3339_opts(SecondsFormat::Micros, true)
            }
        }
    })
}

/// Refuses to redeliver a delivery that is still on its way.
pub fn redeliver_check(name: &str, status: &Value) -> Result<(), CliError> {
    match status["phase"].as_str() {
        Some("Succeeded" | "Failed") => Ok(()),
        _ => Err(CliError::Message(format!(
            "{} is Pending: it is still being delivered (attempt {} so far); only a Succeeded or Failed delivery can be sent again",
            Kind::WebhookDelivery.object(name),
            status["attempts"].as_i64().unwrap_or(0)
        ))),
    }
}

/// A warning for `redeliver` when the Webhook sends nothing now: the
/// deliveries made Pending wait until it does.
pub fn webhook_warning(name: &str, webhook: &Value) -> Option<String> {
    if webhook["spec"]["active"] == false {
        return Some(format!(
            "webhook {name} is not active (spec.active: false): the deliveries wait until it is"
        ));
    }
    let disabled = &webhook["status"]["disabled"];
    disabled["reason"].as_str().map(|reason| {
        format!(
            "webhook {name} is switched off ({reason}): the deliveries wait until its spec.url changes"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// An Instance as the API server returns it, with a GitOps tool's
    /// apply and an earlier apply of ours in managedFields.
    fn instance(our_fields: Value) -> Value {
        json!({
            "apiVersion": "ctrlplane.dev/v1alpha1",
            "kind": "Instance",
            "metadata": {
                "name": "web",
                "namespace": "team-a",
                "resourceVersion": "4711",
                "managedFields": [
                    {
                        "manager": "argocd-controller",
                        "operation": "Apply",
                        "fieldsV1": {"f:spec": {"f:image": {}, "f:replicas": {}, "f:ports": {}}}
                    },
                    {
                        "manager": FIELD_MANAGER,
                        "operation": "Apply",
                        "fieldsV1": our_fields
                    },
                    {
                        "manager": FIELD_MANAGER,
                        "operation": "Update",
                        "fieldsV1": {"f:spec": {"f:image": {}}}
                    },
                    {
                        "manager": "ctrlplane-operator",
                        "operation": "Update",
                        "subresource": "status",
                        "fieldsV1": {"f:status": {"f:phase": {}}}
                    }
                ]
            },
            "spec": {
                "image": "nginx:1.27",
                "replicas": 2,
                "state": "Stopped",
                "suspend": {"reason": "invoice 1042 unpaid"},
                "restartedAt": "2026-11-27T07:00:00.123Z"
            }
        })
    }

    #[test]
    fn only_our_applied_fields_count_as_ours() {
        let object =
            instance(json!({"f:spec": {"f:state": {}, "f:suspend": {".": {}, "f:reason": {}}}}));
        assert_eq!(
            owned_fields(Kind::Instance, &object),
            BTreeSet::from(["state", "suspend"])
        );
        // An Update of ours (a merge patch) and other managers' fields are not.
        let object = instance(json!({}));
        assert!(owned_fields(Kind::Instance, &object).is_empty());
        assert!(owned_fields(Kind::Instance, &json!({"metadata": {}})).is_empty());
    }

    #[test]
    fn an_apply_sends_again_what_we_own_so_nothing_of_ours_is_dropped() {
        // `stop` earlier, now `scale`: spec.state must go along, or the
        // API server would remove it and the Instance would start again.
        let object = instance(json!({"f:spec": {"f:state": {}, "f:restartedAt": {}}}));
        let body = apply_body(Kind::Instance, &object, &replicas(4));
        assert_eq!(
            body,
            json!({
                "apiVersion": "ctrlplane.dev/v1alpha1",
                "kind": "Instance",
                "metadata": {"name": "web", "resourceVersion": "4711"},
                "spec": {
                    "state": "Stopped",
                    "restartedAt": "2026-11-27T07:00:00.123Z",
                    "replicas": 4
                }
            })
        );
    }

    #[test]
    fn an_apply_of_a_field_we_own_sends_the_new_value() {
        let object = instance(json!({"f:spec": {"f:state": {}}}));
        let body = apply_body(Kind::Instance, &object, &state(true));
        assert_eq!(body["spec"], json!({"state": "Running"}));
        let body = apply_body(Kind::Instance, &object, &suspend("maintenance"));
        assert_eq!(
            body["spec"],
            json!({"state": "Stopped", "suspend": {"reason": "maintenance"}})
        );
    }

    #[test]
    fn a_field_we_owned_that_is_gone_is_not_sent() {
        let mut object = instance(json!({"f:spec": {"f:suspend": {}}}));
        object["spec"].as_object_mut().unwrap().remove("suspend");
        let body = apply_body(Kind::Instance, &object, &state(false));
        assert_eq!(body["spec"], json!({"state": "Stopped"}));
    }

    #[test]
    fn the_write_commands_set_these_values() {
        let now = at("2026-11-27T08:30:15.123456Z");
        assert_eq!(Value::Object(state(false)), json!({"state": "Stopped"}));
        assert_eq!(Value::Object(replicas(0)), json!({"replicas": 0}));
        assert_eq!(
            Value::Object(restart(now)),
            json!({"restartedAt": "2026-11-27T08:30:15.123Z"})
        );
        assert_eq!(
            expire(now),
            json!({"spec": {"expiresAt": "2026-11-27T08:30:15Z", "ttlSeconds": null}})
        );
        assert_eq!(
            redeliver(now),
            json!({"metadata": {"annotations": {"ctrlplane.dev/redeliver-requested-at": "2026-11-27T08:30:15.123456Z"}}})
        );
    }

    #[test]
    fn resume_removes_only_spec_suspend_and_warns_when_it_stays_stopped() {
        let object = instance(json!({}));
        let (patch, warning) = resume(Kind::Instance, "web", &object["spec"]).unwrap();
        assert_eq!(patch, json!({"spec": {"suspend": null}}));
        assert!(warning.unwrap().contains("spec.state is Stopped"));
        let running = json!({"suspend": {"reason": "x"}, "state": "Running"});
        assert_eq!(resume(Kind::Instance, "web", &running).unwrap().1, None);
        let err = resume(Kind::Instance, "web", &json!({"state": "Running"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "instance.ctrlplane.dev/web is not suspended"
        );
    }

    #[test]
    fn starting_a_suspended_instance_warns() {
        let object = instance(json!({}));
        let warning = start_warning(Kind::Instance, "web", &object["spec"]).unwrap();
        assert!(warning.contains("invoice 1042 unpaid") && warning.contains("resume inst/web"));
        assert_eq!(start_warning(Kind::Instance, "web", &json!({})), None);
    }

    #[test]
    fn extend_moves_a_ttl_from_creation_to_now_plus_d() {
        let created = at("2026-11-27T08:00:00Z");
        let now = at("2026-11-27T08:10:00.400Z");
        let (change, deadline) = extend(
            "sandbox.ctrlplane.dev/box",
            &json!({"ttlSeconds": 600}),
            created,
            now,
            Duration::from_secs(3600),
        )
        .unwrap();
        // Ten minutes old plus an hour, rounded up to the second.
        assert_eq!(Value::Object(change), json!({"ttlSeconds": 4201}));
        assert_eq!(deadline, at("2026-11-27T09:10:01Z"));
    }

    #[test]
    fn extend_moves_an_expiry_time_to_now_plus_d() {
        let created = at("2026-11-27T08:00:00Z");
        let now = at("2026-11-27T08:10:00.400Z");
        let (change, deadline) = extend(
            "sandbox.ctrlplane.dev/box",
            &json!({"expiresAt": "2026-11-27T08:15:00Z"}),
            created,
            now,
            Duration::from_secs(5400),
        )
        .unwrap();
        assert_eq!(
            Value::Object(change),
            json!({"expiresAt": "2026-11-27T09:40:00Z"})
        );
        assert_eq!(deadline, at("2026-11-27T09:40:00Z"));
    }

    #[test]
    fn extend_refuses_what_the_api_would_and_what_does_not_expire() {
        let created = at("2026-11-01T00:00:00Z");
        let now = at("2026-11-27T00:00:00Z");
        let ttl = json!({"ttlSeconds": 600});
        let err = |spec: &Value, d: u64| {
            extend(
                "sandbox.ctrlplane.dev/box",
                spec,
                created,
                now,
                Duration::from_secs(d),
            )
            .unwrap_err()
            .to_string()
        };
        assert!(err(&ttl, 30).contains("between 1m and 720h"));
        assert!(err(&ttl, 721 * 3600).contains("between 1m and 720h"));
        // 26 days old: a TTL counted from creation has four days left to give.
        assert!(
            err(&ttl, 5 * 86400).contains("extended by at most 96h"),
            "{}",
            err(&ttl, 5 * 86400)
        );
        assert!(err(&json!({}), 3600).contains("does not expire"));
        // The same request on an expiry time is fine.
        assert!(
            extend(
                "sandbox.ctrlplane.dev/box",
                &json!({"expiresAt": "2026-11-27T00:00:00Z"}),
                created,
                now,
                Duration::from_secs(5 * 86400)
            )
            .is_ok()
        );
    }

    #[test]
    fn only_completed_deliveries_are_sent_again() {
        assert!(redeliver_check("d", &json!({"phase": "Failed"})).is_ok());
        assert!(redeliver_check("d", &json!({"phase": "Succeeded"})).is_ok());
        let err = redeliver_check("d", &json!({"phase": "Pending", "attempts": 2}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is Pending") && err.contains("attempt 2"),
            "{err}"
        );
        assert!(redeliver_check("d", &Value::Null).is_err());
    }
    #[test]
    fn redelivering_to_a_switched_off_webhook_warns() {
        assert_eq!(
            webhook_warning("hooks", &json!({"spec": {"active": true}})),
            None
        );
        assert!(
            webhook_warning("hooks", &json!({"spec": {"active": false}}))
                .unwrap()
                .contains("not active")
        );
        assert!(
            webhook_warning(
                "hooks",
                &json!({"spec": {}, "status": {"disabled": {"reason": "EndpointGone"}}})
            )
            .unwrap()
            .contains("switched off (EndpointGone)")
        );
    }
}
