//! The few ways the operator reads the API server's answers, written once:
//! what an error says in one line, whether it means "already gone" or "the
//! namespace is going away", deletes where "not found" is success, and the
//! status write with optimistic concurrency that every kind uses.

use kube::api::{DeleteParams, PostParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A kube error in one line a person can read: for an API error, the API
/// server's own message and code, without the debug dump of the response.
pub fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}

/// The HTTP code of an API error, if the API server answered one.
pub fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// 404: the object is not there.
pub fn is_not_found(error: &kube::Error) -> bool {
    api_code(error) == Some(404)
}

/// 409: AlreadyExists on a create, Conflict on a write with a stale
/// resourceVersion.
pub fn is_conflict(error: &kube::Error) -> bool {
    api_code(error) == Some(409)
}

/// The namespace is being deleted: nothing new can be created in it. The
/// API server answers 403 with this reason in the message (there is no
/// dedicated status reason for it).
pub fn is_namespace_terminating(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 403 && status.message.contains("because it is being terminated"))
}

/// Whether an object is gone after a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// It was already gone.
    AlreadyGone,
    /// The delete was accepted; it may take a while (finalizers, dependents).
    Requested,
}

/// Deletes an object; "not found" is success, since gone is what was asked.
pub async fn delete_if_present<K>(
    api: &Api<K>,
    name: &str,
    params: &DeleteParams,
) -> Result<Deleted, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(Deleted::Requested),
        Err(error) if is_not_found(&error) => Ok(Deleted::AlreadyGone),
        Err(error) => Err(error),
    }
}

/// What a conflict-checked status write came to.
#[derive(Debug)]
pub enum StatusWrite<K> {
    /// Written; the object as the API server now has it.
    Written(K),
    /// The object changed since it was read (409): observe again, never
    /// overwrite.
    Conflict,
    /// The object is gone (404): nothing left to write to.
    Gone,
}

/// Replaces an object's status through the status subresource, carrying the
/// resourceVersion it was read at, so a write never overwrites a change it
/// has not seen.
pub async fn replace_status<K>(api: &Api<K>, object: &K) -> Result<StatusWrite<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    match api
        .replace_status(&name, &PostParams::default(), object)
        .await
    {
        Ok(written) => Ok(StatusWrite::Written(written)),
        Err(error) if is_conflict(&error) => {
            tracing::debug!(
                resource_version = object.meta().resource_version,
                "status write conflicted; observing again"
            );
            Ok(StatusWrite::Conflict)
        }
        Err(error) if is_not_found(&error) => Ok(StatusWrite::Gone),
        Err(error) => Err(error),
    }
}
