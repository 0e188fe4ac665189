//! The client connection: authentication and TLS as the pipeline file says,
//! sized buffers so that a burst does not overflow a subscription, and a
//! count of the messages lost when one does anyway.
//!
//! Secrets (a token, a password, an NKey seed, a credentials file) are read
//! here, when connecting, and go nowhere else: never into a log or an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use async_nats::{Client, ConnectOptions, Event};

use crate::config::{NatsAuth, NatsSecurity};

/// Messages a subscription may hold before the client drops them. Core NATS
/// drops silently when a subscriber falls behind; a deep buffer rides out
/// bursts, and [`Connection::slow_consumer_events`] counts what is lost anyway.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// Outgoing messages the client may queue before `publish` waits.
const CLIENT_CAPACITY: usize = 1 << 16;

#[derive(Clone)]
pub struct Connection {
    pub client: Client,
    pub jetstream: async_nats::jetstream::Context,
    slow_consumer_events: Arc<AtomicU64>,
}

impl Connection {
    /// The key-value bucket `config` names, created as `config` says if the
    /// server does not have it yet (an existing bucket is used as it is).
    pub async fn key_value(&self, config: async_nats::jetstream::kv::Config) -> Result<async_nats::jetstream::kv::Store> {
        let bucket = config.bucket.clone();
        match self.jetstream.get_key_value(&bucket).await {
            Ok(store) => Ok(store),
            Err(_) => self.jetstream.create_key_value(config).await.with_context(|| format!("cannot open or create the key-value bucket `{bucket}`")),
        }
    }

    /// How many times the client reported a subscription overflowing (each
    /// report means at least one message was dropped).
    pub fn slow_consumer_events(&self) -> u64 {
        self.slow_consumer_events.load(Ordering::Relaxed)
    }
}

/// Checks a server URL: `nats://` or `tls://` with a host, and no
/// credentials in it, which the client would silently ignore.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://")) else {
        return Err(if url.contains('@') {
            "expected a URL such as \"nats://127.0.0.1:4222\"".to_string()
        } else {
            format!("expected a URL such as \"nats://127.0.0.1:4222\", found {url:?}")
        });
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some((_, host)) = authority.rsplit_once('@') {
        return Err(format!(
            "the NATS URL carries credentials before `@{host}`, which the NATS client would ignore: give them in [nats] as user = \"NAME\" and password = {{ env = \"VARIABLE\" }}, or token = {{ env = \"VARIABLE\" }}"
        ));
    }
    if authority.is_empty() { Err(format!("the NATS URL {url:?} names no host")) } else { Ok(()) }
}

/// Connects without authentication or TLS (a local server, tests).
pub async fn connect(url: &str, name: &str) -> Result<Connection> {
    connect_with(url, name, &NatsSecurity::default()).await
}

/// Connects, authenticating and using TLS as `security` says.
pub async fn connect_with(url: &str, name: &str, security: &NatsSecurity) -> Result<Connection> {
    check_url(url).map_err(anyhow::Error::msg)?;
    let slow = Arc::new(AtomicU64::new(0));
    let counter = slow.clone();
    let options = secured(ConnectOptions::new(), security).await?;
    let client = options
        .name(name)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .client_capacity(CLIENT_CAPACITY)
        .event_callback(move |event| {
            let counter = counter.clone();
            async move {
                crate::metrics::metrics().nats_event(&event);
                match event {
                    Event::SlowConsumer(sid) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(subscription = sid, "NATS subscription fell behind; the client dropped messages.");
                    }
                    Event::Disconnected => tracing::warn!("Disconnected from NATS; reconnecting."),
                    Event::Connected => tracing::info!("Connected to NATS."),
                    other => tracing::debug!(event = %other, "NATS client event."),
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    let jetstream = async_nats::jetstream::new(client.clone());
    crate::metrics::metrics().nats_connected.set(1);
    Ok(Connection { client, jetstream, slow_consumer_events: slow })
}

/// `options` with the credentials and TLS of `security`, read now.
async fn secured(mut options: ConnectOptions, security: &NatsSecurity) -> Result<ConnectOptions> {
    options = match &security.auth {
        NatsAuth::None => options,
        NatsAuth::Token(token) => options.token(token.read("the NATS token").map_err(anyhow::Error::msg)?),
        NatsAuth::UserPassword { user, password } => options.user_and_password(user.clone(), password.read("the NATS password").map_err(anyhow::Error::msg)?),
        NatsAuth::NKey(path) => {
            let seed = std::fs::read_to_string(path).with_context(|| format!("cannot read the NKey seed file {}", path.display()))?;
            let seed = seed.trim().to_string();
            if !seed.starts_with('S') {
                bail!("{} does not hold an NKey seed (one starts with `S`, such as `SU...` for a user)", path.display());
            }
            options.nkey(seed)
        }
        NatsAuth::Creds(path) => options.credentials_file(path).await.with_context(|| format!("cannot read the NATS credentials file {}", path.display()))?,
    };
    if let Some(tls) = &security.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &tls.identity {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options)
}
