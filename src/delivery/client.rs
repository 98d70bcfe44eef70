//! The HTTP side of a delivery: one POST, signed, with a timeout, through a
//! resolver that applies the address guard to every address it returns, so
//! the check happens when connecting and not only when the Webhook is read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::guard::forbidden_reason;
use super::{AttemptResult, answer};

/// Everything one attempt needs besides the body.
pub struct Request<'a> {
    pub url: &'a str,
    pub timeout: Duration,
    pub ca_bundle: Option<&'a str>,
    pub headers: &'a std::collections::BTreeMap<String, String>,
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
}

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("spec.caBundle holds no usable PEM certificate")]
    CaBundle,
    #[error("setting up TLS: {0}")]
    Tls(String),
    #[error("building the HTTP client: {0}")]
    Build(String),
}

/// Sends deliveries. Clients are kept per (CA bundle, timeout), so
/// connections to one endpoint are reused across deliveries.
pub struct Sender {
    allow_private: bool,
    clients: Mutex<HashMap<(Option<String>, Duration), reqwest::Client>>,
}

impl Sender {
    pub fn new(allow_private: bool) -> Self {
        Self {
            allow_private,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(
        &self,
        ca_bundle: Option<&str>,
        timeout: Duration,
    ) -> Result<reqwest::Client, ClientError> {
        let key = (ca_bundle.map(str::to_string), timeout);
        if let Some(client) = self.clients.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(client);
        }
        let client = build_client(ca_bundle, timeout, self.allow_private)?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(key, client.clone());
        }
        Ok(client)
    }

    /// One attempt. Never fails as a Rust error: every outcome is an
    /// [`AttemptResult`] the delivery records.
    pub async fn send(&self, request: &Request<'_>, body: Vec<u8>) -> (AttemptResult, Duration) {
        let started = Instant::now();
        let result = self.try_send(request, body).await;
        (result, started.elapsed())
    }

    async fn try_send(&self, request: &Request<'_>, body: Vec<u8>) -> AttemptResult {
        let url = match reqwest::Url::parse(request.url) {
            Ok(url) => url,
            Err(e) => {
                return AttemptResult::Failed {
                    error: format!("invalid URL: {e}"),
                };
            }
        };
        // Literal addresses never reach the resolver: check them here.
        if !self.allow_private
            && let Some(reason) = literal_address_refusal(&url)
        {
            return AttemptResult::Failed { error: reason };
        }
        let client = match self.client(request.ca_bundle, request.timeout) {
            Ok(client) => client,
            Err(e) => {
                return AttemptResult::Failed {
                    error: e.to_string(),
                };
            }
        };
        let mut builder = client
            .post(url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("ctrlplane-operator/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", request.id)
            .header("webhook-timestamp", request.timestamp.to_string())
            .header("webhook-signature", request.signature);
        for (name, value) in request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        match builder.body(body).send().await {
            Ok(response) => answer(
                response.status().as_u16(),
                response.headers(),
                SystemTime::now(),
            ),
            Err(error) => AttemptResult::Failed {
                error: describe(&error),
            },
        }
    }
}

/// A transport error in one line, with the cause that matters (the
/// resolver's refusal, a timeout, a refused connection).
fn describe(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    match causes.last() {
        Some(root) => format!("{what}: {root}"),
        None => what.to_string(),
    }
}

fn literal_address_refusal(url: &reqwest::Url) -> Option<String> {
    let address = match url.host()? {
        url::Host::Ipv4(v4) => std::net::IpAddr::V4(v4),
        url::Host::Ipv6(v6) => std::net::IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    forbidden_reason(address).map(|reason| refusal(&address.to_string(), reason))
}

fn refusal(address: &str, reason: &str) -> String {
    format!(
        "address {address} is {reason}; webhooks may not reach internal networks unless the operator runs with --allow-private-webhook-addresses"
    )
}

/// Resolves names, then drops every address the guard refuses. When none
/// is left the connection fails with the reason.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match forbidden_reason(a.ip()) {
                    Some(reason) => {
                        refused = Some(refusal(&a.ip().to_string(), reason));
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let reason = refused.unwrap_or_else(|| format!("{host} resolved to no address"));
                return Err(reason.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The trust anchors in a Webhook's `spec.caBundle`. The Webhook's Ready
/// condition calls this too, so a bundle that cannot work is reported when
/// the Webhook is applied rather than at its first delivery.
pub fn private_ca_roots(bundle: &str) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()).flatten() {
        // One bad certificate among good ones should not hide the good ones;
        // only a bundle with nothing usable at all is an error.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(ClientError::CaBundle);
    }
    Ok(roots)
}

fn build_client(
    ca_bundle: Option<&str>,
    timeout: Duration,
    allow_private: bool,
) -> Result<reqwest::Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(bundle) = ca_bundle {
        roots.extend(private_ca_roots(bundle)?.roots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        // A redirect is not a delivery, and following one could lead
        // anywhere; the status code is recorded instead.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .no_proxy();
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    builder
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_bundle_yields_each_certificate_it_holds() {
        let bundle = format!("{}\n{}", ca_pem(), ca_pem());
        assert_eq!(private_ca_roots(&bundle).unwrap().len(), 2);
    }

    #[test]
    fn unusable_entries_are_skipped_when_a_good_one_remains() {
        let bundle = format!(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n{}",
            ca_pem()
        );
        assert_eq!(private_ca_roots(&bundle).unwrap().len(), 1);
    }

    #[test]
    fn a_bundle_with_no_usable_certificate_is_refused() {
        for bundle in [
            "",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        ] {
            let error = private_ca_roots(bundle).unwrap_err();
            assert!(error.to_string().contains("spec.caBundle"), "{error}");
        }
    }
}
