//! A webhook receiver for the tests: a real HTTP server on loopback that
//! verifies every request with an independent Standard Webhooks
//! implementation (the `standardwebhooks` crate, not our signing code),
//! records what arrived, and answers as the test tells it to.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::oneshot;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 OK.
    Accept,
    /// This status code, for every request.
    Answer(u16),
    /// 200 OK, after this long: a slow receiver.
    Slow(std::time::Duration),
    /// Takes the request and never answers.
    Hang,
}

/// One request that arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub type_: String,
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub sequence: i64,
    /// Which of the receiver's secrets verify the signature (by index).
    pub verified_with: Vec<usize>,
    pub body: serde_json::Value,
    pub at: Instant,
    pub status: u16,
}

struct Shared {
    mode: Mode,
    in_flight: usize,
    max_in_flight: usize,
    secrets: Vec<String>,
    received: Vec<Received>,
    failed_handshakes: Vec<String>,
}

/// A receiver listening on 127.0.0.1, over plain HTTP or HTTPS.
pub struct Receiver {
    pub address: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Mutex<Shared>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver that accepts events signed with any of `secrets`.
    pub async fn start(secrets: &[&str]) -> Self {
        Self::start_with_tls(secrets, None).await
    }

    /// Like [`Receiver::start`], serving HTTPS with this server identity.
    pub async fn start_https(secrets: &[&str], tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with_tls(secrets, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with_tls(secrets: &[&str], tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let mut receiver = Self {
            address: "127.0.0.1:0".parse().unwrap(),
            tls,
            shared: Arc::new(Mutex::new(Shared {
                mode: Mode::Accept,
                in_flight: 0,
                max_in_flight: 0,
                secrets: secrets.iter().map(|s| s.to_string()).collect(),
                received: Vec::new(),
                failed_handshakes: Vec::new(),
            })),
            stop: None,
            task: None,
        };
        receiver.listen().await;
        receiver
    }

    async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.address).await.unwrap();
        self.address = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(self.shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        let stopped = async {
            let _ = stopped.await;
        };
        self.task = Some(match self.tls.clone() {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await;
            }),
            Some(acceptor) => {
                let listener = TlsListener {
                    tcp: listener,
                    acceptor,
                    shared: self.shared.clone(),
                };
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await;
                })
            }
        });
    }

    /// The URL a Webhook points at.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/hook", self.address)
    }

    /// TLS handshakes that failed, with the reason (a client that does not
    /// trust the certificate ends here, before any request).
    pub fn failed_handshakes(&self) -> Vec<String> {
        self.shared.lock().unwrap().failed_handshakes.clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().unwrap().mode = mode;
    }

    /// Stops listening: connections are refused until [`Receiver::resume`].
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    pub async fn resume(&mut self) {
        self.listen().await;
    }

    /// Everything that arrived so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// The most requests it was handling at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.lock().unwrap().max_in_flight
    }

    /// Requests that were answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Accepts TCP connections and completes the TLS handshake before handing
/// them to axum; a failed handshake is recorded and the next one awaited.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Mutex<Shared>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                continue;
            };
            // A client that connects and never says hello must not stall
            // every later connection.
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.acceptor.accept(tcp));
            match handshake.await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => self
                    .shared
                    .lock()
                    .unwrap()
                    .failed_handshakes
                    .push(e.to_string()),
                Err(_) => self
                    .shared
                    .lock()
                    .unwrap()
                    .failed_handshakes
                    .push("handshake timed out".into()),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn handle(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = {
        let mut shared = shared.lock().unwrap();
        shared.in_flight += 1;
        shared.max_in_flight = shared.max_in_flight.max(shared.in_flight);
        shared.mode
    };
    if let Mode::Slow(delay) = mode {
        // Being slow is this receiver's whole behaviour.
        tokio::time::sleep(delay).await;
    }
    if mode == Mode::Hang {
        // Never answering is this receiver's whole behaviour.
        futures::future::pending::<()>().await;
    }
    let mut shared = shared.lock().unwrap();
    shared.in_flight -= 1;
    let verified_with = shared
        .secrets
        .iter()
        .enumerate()
        .filter(|(_, secret)| {
            standardwebhooks::Webhook::new(secret)
                .map(|w| w.verify(&body, &headers).is_ok())
                .unwrap_or(false)
        })
        .map(|(i, _)| i)
        .collect();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let status = match shared.mode {
        Mode::Accept | Mode::Slow(_) | Mode::Hang => 200,
        Mode::Answer(code) => code,
    };
    let data = &parsed["data"];
    shared.received.push(Received {
        id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        type_: parsed["type"].as_str().unwrap_or_default().to_string(),
        uid: data["uid"].as_str().unwrap_or_default().to_string(),
        name: data["name"].as_str().unwrap_or_default().to_string(),
        namespace: data["namespace"].as_str().unwrap_or_default().to_string(),
        sequence: data["sequence"].as_i64().unwrap_or_default(),
        verified_with,
        body: parsed.clone(),
        at: Instant::now(),
        status,
    });
    (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), "").into_response()
}
