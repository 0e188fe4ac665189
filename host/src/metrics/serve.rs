//! The host's HTTP endpoints, for Prometheus and for probes:
//!
//! - `/metrics`: every metric, in the Prometheus text format;
//! - `/healthz`: 200 while the process runs;
//! - `/readyz`: 200 once connected to NATS with every pipeline of the file
//!   running a version, 503 with what is missing otherwise (a Kubernetes
//!   readiness probe, a load balancer).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics;

/// What `/readyz` answers from: the NATS connection, and the pipelines the
/// host should run against those it runs.
pub struct Readiness {
    client: async_nats::Client,
    pipelines: Mutex<(BTreeSet<String>, BTreeSet<String>)>,
}

impl Readiness {
    pub fn new(client: async_nats::Client) -> Arc<Self> {
        Arc::new(Self { client, pipelines: Mutex::default() })
    }

    /// The pipelines the host should run, and those it runs.
    pub fn set(&self, wanted: impl IntoIterator<Item = String>, running: impl IntoIterator<Item = String>) {
        *self.pipelines.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = (wanted.into_iter().collect(), running.into_iter().collect());
    }

    /// Why the host is not ready, if it is not.
    fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.client.connection_state() != async_nats::connection::State::Connected {
            missing.push(format!("not connected to NATS ({})", self.client.connection_state()));
        }
        let (wanted, running) = &*self.pipelines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if wanted.is_empty() {
            missing.push("no pipeline started yet".into());
        }
        for name in wanted.difference(running) {
            missing.push(format!("pipeline `{name}` runs no version"));
        }
        missing
    }
}

/// Binds `addr`; the returned address is the one bound (a port of 0 picks one).
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
    let local = listener.local_addr().context("cannot read the metrics address")?;
    Ok((listener, local))
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, readiness: Arc<Readiness>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "Cannot accept a connection to the metrics endpoint.");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| std::future::ready(Ok::<_, Infallible>(answer(&request, &readiness))));
            if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "A metrics connection ended with an error.");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, readiness: &Readiness) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics().encode())));
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE.parse().expect("a valid header value"));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness.missing() {
            missing if missing.is_empty() => text(StatusCode::OK, "ready\n".into()),
            missing => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", missing.join("; "))),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
