//! The Tenant Manager's wire format, as the orch-library `tenancy` poller
//! (v0.6.x, `go/pkg/tenancy/tenancy.go` and `poller.go`) speaks it. Serde
//! only: what each request and answer looks like, nothing about when they
//! are sent.
//!
//! Decoding is as lenient as Go's `encoding/json` where the Go client relies
//! on it (a missing or null field is its zero value, `"events": null` is no
//! events, unknown fields are ignored) and as strict where it is strict: a
//! `resourceId` that is not a UUID fails the whole answer, as `uuid.UUID`'s
//! text decoding does there. Stricter in two corners: a missing `resourceId`
//! fails too (Go would act on the nil UUID, an event about no resource),
//! and the 38-character form must be in braces (Go drops the first and last
//! character unchecked).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `Event.eventType` of a created resource.
pub const EVENT_CREATED: &str = "created";
/// `Event.eventType` of a deleted resource.
pub const EVENT_DELETED: &str = "deleted";
/// `Event.resourceType` of an organisation.
pub const RESOURCE_ORG: &str = "org";
/// `Event.resourceType` of a project.
pub const RESOURCE_PROJECT: &str = "project";

/// What a controller reports about one resource (`PUT /v1/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Sent before the handler runs.
    InProgress,
    /// The handler succeeded (created events; deleted ones DELETE the row).
    Completed,
    /// The handler failed; `message` says why.
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Error => "error",
        }
    }
}

/// A UUID in its canonical form (lowercase, hyphenated), which is how Go's
/// `uuid.UUID` writes it and how it appears in our labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(String);

/// A string that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid UUID {0:?}")]
pub struct InvalidUuid(pub String);

impl Uuid {
    /// Parses the forms `github.com/google/uuid`'s `Parse` accepts: the
    /// canonical 36 characters, the same in braces, with a `urn:uuid:`
    /// prefix, or 32 bare hex digits; any case.
    pub fn parse(text: &str) -> Result<Self, InvalidUuid> {
        let invalid = || InvalidUuid(text.to_string());
        let hyphenated = match text.len() {
            36 => text,
            38 if text.starts_with('{') && text.ends_with('}') => &text[1..37],
            45 if text
                .get(..9)
                .is_some_and(|p| p.eq_ignore_ascii_case("urn:uuid:")) =>
            {
                &text[9..]
            }
            32 => {
                if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid());
                }
                let t = text.to_ascii_lowercase();
                return Ok(Self(format!(
                    "{}-{}-{}-{}-{}",
                    &t[..8],
                    &t[8..12],
                    &t[12..16],
                    &t[16..20],
                    &t[20..]
                )));
            }
            _ => return Err(invalid()),
        };
        let well_formed = hyphenated.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
        if !well_formed {
            return Err(invalid());
        }
        Ok(Self(hyphenated.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Uuid::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One tenancy event (Go: `tenancy.Event`). Replayed events (synthesized
/// from the current state) and incremental ones look the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Monotonically increasing sequence number.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: i64,
    /// `created` or `deleted`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub event_type: String,
    /// `org` or `project`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub resource_type: String,
    pub resource_id: Uuid,
    #[serde(default, deserialize_with = "null_as_default")]
    pub resource_name: String,
    /// Set for projects; null for organisations.
    #[serde(default)]
    pub org_id: Option<Uuid>,
    #[serde(default)]
    pub org_name: Option<String>,
    /// Reserved for hierarchical resource types; not used.
    #[serde(default)]
    pub folder_id: Option<Uuid>,
    /// When the resource changed. Kept as text: nothing here reads it, and
    /// a timestamp we cannot parse must not make us drop the event.
    #[serde(default)]
    pub created_at: Option<String>,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} {} {}/{} ({})",
            self.id, self.event_type, self.resource_type, self.resource_name, self.resource_id
        )
    }
}

/// The answer to `GET /v1/events` (Go: `eventsResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    /// Go writes a nil slice as `null`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub events: Vec<Event>,
    #[serde(default)]
    pub last_event_id: i64,
}

fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Event>, D::Error> {
    null_as_default(deserializer)
}

/// Go decodes `null` into a string or a number as its zero value.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The body of `PUT /v1/status` (Go: `statusUpdateRequest`). `message` is
/// always present, empty unless the status is `error`, as Go writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusUpdate {
    pub controller: String,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub status: Status,
    pub message: String,
}

/// The body of `DELETE /v1/status` (Go: `statusDeleteRequest`), sent after
/// a deleted event was handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDelete {
    pub controller: String,
    pub resource_type: String,
    pub resource_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

    #[test]
    fn every_form_google_uuid_names_parses_to_the_canonical_one() {
        for form in [
            ID.to_string(),
            ID.to_uppercase(),
            format!("{{{ID}}}"),
            format!("urn:uuid:{ID}"),
            format!("URN:UUID:{}", ID.to_uppercase()),
            ID.replace('-', ""),
        ] {
            assert_eq!(Uuid::parse(&form).unwrap().as_str(), ID, "{form}");
        }
    }

    #[test]
    fn what_is_not_a_uuid_is_refused() {
        for bad in [
            "",
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeee",
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeeg",
            "aaaaaaaabbbb-cccc-dddd-eeeeeeeeeeee-",
            // Go takes this one; an id in parentheses is not one we expect.
            "(aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)",
            "urn:uid:aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "aaaaaaaabbbbccccddddeeeeeeeeeeeZ",
        ] {
            assert!(Uuid::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_page_decodes_as_go_writes_it() {
        // The shape of poller_test.go's pages: an org event (orgId null) and
        // a project event, createdAt in RFC 3339 with nanoseconds.
        let page: EventsPage = serde_json::from_str(&format!(
            r#"{{"events":[
                {{"id":1,"eventType":"created","resourceType":"org","resourceId":"{ID}",
                  "resourceName":"acme","orgId":null,"orgName":null,"folderId":null,
                  "createdAt":"2026-05-15T10:00:00.123456789Z"}},
                {{"id":2,"eventType":"created","resourceType":"project",
                  "resourceId":"11111111-2222-3333-4444-555555555555","resourceName":"web",
                  "orgId":"{ID}","orgName":"acme","folderId":null,
                  "createdAt":"2026-05-15T10:00:01Z","somethingNew":true}}],
              "lastEventId":2}}"#
        ))
        .unwrap();
        assert_eq!(page.last_event_id, 2);
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.events[0].org_id, None);
        assert_eq!(page.events[1].org_id.as_ref().unwrap().as_str(), ID);
        assert_eq!(page.events[1].org_name.as_deref(), Some("acme"));
    }

    #[test]
    fn go_zero_values_decode() {
        // A nil slice is written as null; an empty response body object has
        // every field at its zero value.
        let page: EventsPage = serde_json::from_str(r#"{"events":null,"lastEventId":0}"#).unwrap();
        assert_eq!(page, EventsPage::default());
        assert_eq!(
            serde_json::from_str::<EventsPage>("{}").unwrap(),
            EventsPage::default()
        );
        let event: Event = serde_json::from_str(&format!(
            r#"{{"id":null,"eventType":null,"resourceType":"org","resourceId":"{ID}","resourceName":null}}"#
        ))
        .unwrap();
        assert_eq!(
            (
                event.id,
                event.event_type.as_str(),
                event.resource_name.as_str()
            ),
            (0, "", "")
        );
    }

    #[test]
    fn a_bad_resource_id_fails_the_whole_page() {
        let result = serde_json::from_str::<EventsPage>(
            r#"{"events":[{"id":1,"eventType":"created","resourceType":"org","resourceId":"nope"}],"lastEventId":1}"#,
        );
        assert!(result.is_err());
    }

    #[test]
    fn status_bodies_have_exactly_the_go_fields() {
        let update = StatusUpdate {
            controller: "ctrl".into(),
            resource_type: RESOURCE_PROJECT.into(),
            resource_id: Uuid::parse(ID).unwrap(),
            status: Status::InProgress,
            message: String::new(),
        };
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            serde_json::json!({"controller": "ctrl", "resourceType": "project",
                "resourceId": ID, "status": "in_progress", "message": ""})
        );
        let delete = StatusDelete {
            controller: "ctrl".into(),
            resource_type: RESOURCE_ORG.into(),
            resource_id: Uuid::parse(ID).unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&delete).unwrap(),
            serde_json::json!({"controller": "ctrl", "resourceType": "org", "resourceId": ID})
        );
        for status in [Status::InProgress, Status::Completed, Status::Error] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
    }

    proptest! {
        /// Parsing is idempotent on its own output, and every form of the
        /// same 128 bits gives the same canonical text.
        #[test]
        fn canonical_form_round_trips(bytes in proptest::array::uniform16(any::<u8>())) {
            let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
            let parsed = Uuid::parse(&hex).unwrap();
            prop_assert_eq!(Uuid::parse(parsed.as_str()).unwrap(), parsed.clone());
            prop_assert_eq!(Uuid::parse(&format!("{{{}}}", parsed.as_str().to_uppercase())).unwrap(), parsed.clone());
            prop_assert_eq!(parsed.as_str(), parsed.as_str().to_lowercase());
        }
    }
}
