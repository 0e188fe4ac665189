//! Where the fleet stands: each host following a release writes what it
//! runs into the key-value bucket `SLUICE_HOSTS`, whose entries expire
//! (`TTL`) unless refreshed, so a host that died drops out of `sluice status`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::nats::Connection;

pub const HOSTS: &str = "SLUICE_HOSTS";
/// How long a host's entry lives without a refresh.
pub const TTL: Duration = Duration::from_secs(30);
/// How often a host refreshes it.
pub const REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    pub release: String,
    /// The revision it runs.
    pub revision: u64,
    /// Each pipeline's running version id.
    pub pipelines: BTreeMap<String, String>,
    /// When it took up that revision (RFC 3339).
    pub since: String,
    /// The last revision it could not take up, and why.
    pub refused: Option<Refusal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub revision: u64,
    pub reason: String,
}

/// The bucket, opened or created with its TTL.
pub async fn bucket(connection: &Connection) -> Result<kv::Store> {
    connection
        .key_value(kv::Config { bucket: HOSTS.into(), max_age: TTL, history: 1, description: "sluice: what each host runs".into(), ..Default::default() })
        .await
}

/// Writes this host's status (and so refreshes its TTL).
pub async fn publish(store: &kv::Store, key: &str, status: &HostStatus) -> Result<()> {
    store.put(key, serde_json::to_vec(status).expect("a status serialises").into()).await.with_context(|| format!("cannot write the status of host {key}"))?;
    Ok(())
}

/// Every live host's status, of `release` or of all; by host.
pub async fn live(connection: &Connection, release: Option<&str>) -> Result<Vec<HostStatus>> {
    let store = bucket(connection).await?;
    let mut keys = store.keys().await.context("cannot list the hosts")?;
    let mut hosts = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.context("cannot list the hosts")?;
        let Some(value) = store.get(&key).await.with_context(|| format!("cannot read host {key}"))? else { continue };
        match serde_json::from_slice::<HostStatus>(&value) {
            Ok(status) if release.is_none_or(|r| r == status.release) => hosts.push(status),
            Ok(_) => {}
            Err(error) => tracing::warn!(host = %key, %error, "A host's status is not one this sluice reads."),
        }
    }
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(hosts)
}

/// A key for this host: its name and process id, in the characters a key may hold.
pub fn host_key(host: &str) -> String {
    let name: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    format!("{name}-{}", std::process::id())
}
