//! The HTTP side of the tenancy source: the three requests of the Tenant
//! Manager protocol, each with the 30 s timeout the Go poller uses. No
//! authentication: the Tenant Manager serves these routes in-cluster only,
//! behind network policy.

use std::sync::Arc;
use std::time::Duration;

use super::protocol::{EventsPage, Status, StatusDelete, StatusUpdate, Uuid};

/// Which events to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsQuery {
    /// Everything, synthesized from the current state (at start).
    Replay,
    /// Up to `limit` events after `after` (each poll).
    After { after: i64, limit: u32 },
}

/// A request that did not get the answer it needs.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("building the HTTP client: {0}")]
    Build(String),
    #[error("{method} {url}: {reason}")]
    Transport {
        method: &'static str,
        url: String,
        reason: String,
    },
    /// Anything but 200, which is the only success the protocol knows.
    #[error("{method} {url}: the tenant manager answered {code}: {body}")]
    Status {
        method: &'static str,
        url: String,
        code: u16,
        body: String,
    },
    #[error("GET {url}: decoding the events: {reason}")]
    Decode { url: String, reason: String },
}

/// Talks to one Tenant Manager as one controller.
pub struct TenantManagerClient {
    base: String,
    controller: String,
    http: reqwest::Client,
}

impl TenantManagerClient {
    /// `base` has no trailing slash (see `config`).
    pub fn new(base: &str, controller: &str, timeout: Duration) -> Result<Self, ClientError> {
        Ok(Self {
            base: base.to_string(),
            controller: controller.to_string(),
            http: build_client(timeout)?,
        })
    }

    /// `GET {base}/v1/events?controller=<name>&replay=true`, or
    /// `...?controller=<name>&after=<id>&limit=<n>`, parameters in that
    /// order, the controller name query-escaped.
    pub fn events_url(&self, query: EventsQuery) -> String {
        let mut url = format!(
            "{}/v1/events?controller={}",
            self.base,
            url::form_urlencoded::byte_serialize(self.controller.as_bytes()).collect::<String>()
        );
        match query {
            EventsQuery::Replay => url.push_str("&replay=true"),
            EventsQuery::After { after, limit } => {
                url.push_str(&format!("&after={after}&limit={limit}"))
            }
        }
        url
    }

    pub async fn events(&self, query: EventsQuery) -> Result<EventsPage, ClientError> {
        let url = self.events_url(query);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| transport("GET", &url, &e))?;
        let code = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport("GET", &url, &e))?;
        if code != 200 {
            return Err(ClientError::Status {
                method: "GET",
                url,
                code,
                body: excerpt(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    /// `PUT {base}/v1/status` with `{controller, resourceType, resourceId,
    /// status, message}`.
    pub async fn put_status(
        &self,
        resource_type: &str,
        resource_id: &Uuid,
        status: Status,
        message: &str,
    ) -> Result<(), ClientError> {
        let body = StatusUpdate {
            controller: self.controller.clone(),
            resource_type: resource_type.to_string(),
            resource_id: resource_id.clone(),
            status,
            message: message.to_string(),
        };
        self.send_json(reqwest::Method::PUT, "PUT", &body).await
    }

    /// `DELETE {base}/v1/status` with `{controller, resourceType, resourceId}`.
    pub async fn delete_status(
        &self,
        resource_type: &str,
        resource_id: &Uuid,
    ) -> Result<(), ClientError> {
        let body = StatusDelete {
            controller: self.controller.clone(),
            resource_type: resource_type.to_string(),
            resource_id: resource_id.clone(),
        };
        self.send_json(reqwest::Method::DELETE, "DELETE", &body)
            .await
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        name: &'static str,
        body: &impl serde::Serialize,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/status", self.base);
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Transport {
            method: name,
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let response = self
            .http
            .request(method, &url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport(name, &url, &e))?;
        let code = response.status().as_u16();
        if code != 200 {
            let body = response.bytes().await.unwrap_or_default();
            return Err(ClientError::Status {
                method: name,
                url,
                code,
                body: excerpt(&body),
            });
        }
        Ok(())
    }
}

/// The start of an answer's body, for an error message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// A transport error in one line with its root cause (refused connection,
/// timeout, TLS).
fn transport(method: &'static str, url: &str, error: &reqwest::Error) -> ClientError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut root = None;
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        root = Some(cause.to_string());
        source = cause.source();
    }
    ClientError::Transport {
        method,
        url: url.to_string(),
        reason: match root {
            Some(root) => format!("{what}: {root}"),
            None => what.to_string(),
        },
    }
}

/// A client with the system's roots (for an https:// Tenant Manager), the
/// same crypto provider kube uses, and no proxy: the Tenant Manager is a
/// ClusterIP service.
fn build_client(timeout: Duration) -> Result<reqwest::Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .user_agent(concat!("ctrlplane-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_urls_are_the_go_pollers() {
        let client = TenantManagerClient::new(
            "http://tm:8080",
            "ctrlplane-operator",
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(
            client.events_url(EventsQuery::Replay),
            "http://tm:8080/v1/events?controller=ctrlplane-operator&replay=true"
        );
        assert_eq!(
            client.events_url(EventsQuery::After {
                after: 42,
                limit: 100
            }),
            "http://tm:8080/v1/events?controller=ctrlplane-operator&after=42&limit=100"
        );
        let escaped =
            TenantManagerClient::new("http://tm/base", "a b&c", Duration::from_secs(30)).unwrap();
        assert_eq!(
            escaped.events_url(EventsQuery::Replay),
            "http://tm/base/v1/events?controller=a+b%26c&replay=true"
        );
    }

    #[test]
    fn long_error_bodies_are_cut() {
        assert_eq!(excerpt(b"  short \n"), "short");
        let long = "x".repeat(500);
        assert_eq!(excerpt(long.as_bytes()).len(), 203);
    }
}
