//! A sink's state outside the process: the last snapshot of each pipeline's
//! sink, in a NATS key-value bucket (one key per pipeline and stage), so that
//! a restarted host carries on where the last one stopped.
//!
//! A value is `SLS1`, the stream sequence of the last input the snapshot
//! includes (8 bytes, big-endian), then the plugin's snapshot. The sequence
//! lets the worker pass over inputs that were counted but not yet acked when
//! the host stopped, so that none is counted twice. The bucket keeps five
//! values per key: ops can read back an earlier state with `nats kv history`.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::kv;
use bytes::{BufMut, Bytes, BytesMut};

use super::Connection;

const MAGIC: &[u8; 4] = b"SLS1";
const HISTORY: i64 = 5;

/// A saved state: the plugin's snapshot, and the input it was taken after.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// Stream sequence of the last input the snapshot includes (0: none).
    pub sequence: u64,
    pub snapshot: Vec<u8>,
}

pub struct StateStore {
    store: kv::Store,
    key: String,
    /// The largest message the server takes: a larger state cannot be kept.
    max_value: usize,
    /// Whether a state too large to keep was reported (once, until one fits).
    oversize_reported: AtomicBool,
}

impl StateStore {
    /// Opens (creating it if needed) the bucket, for one pipeline's sink.
    pub async fn open(connection: &Connection, bucket: &str, pipeline: &str, stage: &str) -> Result<Self> {
        let store = match connection.jetstream.get_key_value(bucket).await {
            Ok(store) => store,
            Err(_) => connection
                .jetstream
                .create_key_value(kv::Config { bucket: bucket.to_string(), history: HISTORY, description: "sluice: the state of pipelines' sinks".into(), ..Default::default() })
                .await
                .with_context(|| format!("cannot open or create the key-value bucket `{bucket}` for sink state"))?,
        };
        // Room for the header and the key-value protocol's own headers.
        let max_value = connection.client.server_info().max_payload.saturating_sub(1024);
        Ok(Self { store, key: key(pipeline, stage), max_value, oversize_reported: AtomicBool::new(false) })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub async fn load(&self) -> Result<Option<Saved>> {
        let Some(value) = self.store.get(&self.key).await.with_context(|| format!("cannot read the sink state `{}`", self.key))? else { return Ok(None) };
        decode(&value).map(Some).with_context(|| format!("the sink state `{}` is damaged", self.key))
    }

    /// Stores a state. One larger than the server takes is not stored (the
    /// last one that fitted stays) and is reported once: the sink runs on,
    /// but a restart would take up that older state, and the events acked
    /// since would be missing from it.
    pub async fn save(&self, saved: &Saved) -> Result<()> {
        if saved.snapshot.len() + 12 > self.max_value {
            if !self.oversize_reported.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    key = %self.key, bytes = saved.snapshot.len(), max = self.max_value,
                    "The sink's state is larger than NATS takes; it is no longer kept, and a restart would start from the last state that fitted (raise the server's max_payload, or reduce the sink's groups)."
                );
            }
            return Ok(());
        }
        if self.oversize_reported.swap(false, Ordering::Relaxed) {
            tracing::info!(key = %self.key, bytes = saved.snapshot.len(), "The sink's state fits again and is kept.");
        }
        self.store.put(&self.key, encode(saved)).await.with_context(|| format!("cannot store the sink state `{}` ({} bytes)", self.key, saved.snapshot.len()))?;
        Ok(())
    }
}

/// A key NATS accepts: letters, digits and `-_=./`; anything else becomes `_`.
fn key(pipeline: &str, stage: &str) -> String {
    format!("{pipeline}.{stage}").chars().map(|c| if c.is_ascii_alphanumeric() || "-_=./".contains(c) { c } else { '_' }).collect()
}

fn encode(saved: &Saved) -> Bytes {
    let mut buffer = BytesMut::with_capacity(12 + saved.snapshot.len());
    buffer.put_slice(MAGIC);
    buffer.put_u64(saved.sequence);
    buffer.put_slice(&saved.snapshot);
    buffer.freeze()
}

fn decode(value: &[u8]) -> Result<Saved> {
    if value.len() < 12 || &value[..4] != MAGIC {
        bail!("it does not start with the {MAGIC:?} header");
    }
    let sequence = u64::from_be_bytes(value[4..12].try_into().expect("eight bytes"));
    Ok(Saved { sequence, snapshot: value[12..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_reads_back_as_written() {
        let saved = Saved { sequence: 1234, snapshot: b"{\"windows\":[]}".to_vec() };
        assert_eq!(decode(&encode(&saved)).unwrap(), saved);
        assert!(decode(b"{\"windows\":[]}").is_err());
        assert_eq!(key("storyforge alerts", "alert"), "storyforge_alerts.alert");
    }
}
