//! A sink's state outside the process: the last snapshot of each pipeline's
//! sink, in a NATS key-value bucket (one key per pipeline and stage), so that
//! a restarted host carries on where the last one stopped.
//!
//! A value is `SLS1`, the stream sequence of the last input the snapshot
//! includes (8 bytes, big-endian), then the plugin's snapshot. The sequence
//! lets the worker pass over inputs that were counted but not yet acked when
//! the host stopped, so that none is counted twice. The bucket keeps five
//! values per key: ops can read back an earlier state with `nats kv history`.
//!
//! A state larger than the server takes in one message (`max_payload`, 1 MiB
//! by default) is written in parts, to `<key>._part.<slot>.<n>`, and then the
//! key gets a manifest: `SLS2`, the sequence, the slot, the number of parts,
//! the length and the SHA-256 of the whole. The two slots take turns, so a
//! host that dies while writing parts leaves the state the manifest names
//! whole; the hash catches anything else. Only the latest such state can be
//! read back (earlier manifests name parts since overwritten).

use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::kv;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::Connection;

const WHOLE: &[u8; 4] = b"SLS1";
const IN_PARTS: &[u8; 4] = b"SLS2";
const HISTORY: i64 = 5;
/// The bytes of a manifest: header, sequence, slot, parts, length, hash.
const MANIFEST_LEN: usize = 4 + 8 + 1 + 4 + 8 + 32;

/// A saved state: the plugin's snapshot, and the input it was taken after.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// Stream sequence of the last input the snapshot includes (0: none).
    pub sequence: u64,
    pub snapshot: Vec<u8>,
}

/// Where a state stored in parts is.
#[derive(Debug, Clone, PartialEq)]
struct Manifest {
    sequence: u64,
    slot: u8,
    parts: u32,
    len: u64,
    sha256: [u8; 32],
}

/// What the key holds.
#[derive(Debug, PartialEq)]
enum Value {
    Whole(Saved),
    InParts(Manifest),
}

pub struct StateStore {
    store: kv::Store,
    key: String,
    /// The largest value the server takes in one message.
    max_value: usize,
    /// The slot of parts the manifest in the bucket names, if it names one:
    /// the next state in parts goes to the other.
    slot_in_use: Mutex<Option<u8>>,
}

impl StateStore {
    /// Opens (creating it if needed) the bucket, for one pipeline's sink.
    pub async fn open(connection: &Connection, bucket: &str, pipeline: &str, stage: &str) -> Result<Self> {
        let config =
            kv::Config { bucket: bucket.to_string(), history: HISTORY, description: "sluice: the state of pipelines' sinks".into(), ..Default::default() };
        let store = connection.key_value(config).await.context("for sink state")?;
        // Room for the header and the key-value protocol's own headers.
        let max_value = connection.client.server_info().max_payload.saturating_sub(1024).max(MANIFEST_LEN);
        Ok(Self { store, key: key(pipeline, stage), max_value, slot_in_use: Mutex::new(None) })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub async fn load(&self) -> Result<Option<Saved>> {
        let Some(value) = self.store.get(&self.key).await.with_context(|| format!("cannot read the sink state `{}`", self.key))? else { return Ok(None) };
        let saved = match decode(&value).with_context(|| format!("the sink state `{}` is damaged", self.key))? {
            Value::Whole(saved) => saved,
            Value::InParts(manifest) => {
                let saved =
                    self.read_parts(&manifest).await.with_context(|| format!("the sink state `{}`, in {} parts, is damaged", self.key, manifest.parts))?;
                *self.slot_in_use.lock().expect("not poisoned") = Some(manifest.slot);
                saved
            }
        };
        Ok(Some(saved))
    }

    /// Stores a state: whole when it fits in one message, else in parts
    /// (in the slot the bucket does not name) then a manifest.
    pub async fn save(&self, saved: &Saved) -> Result<()> {
        let bytes = saved.snapshot.len();
        let (value, slot) = if bytes + WHOLE.len() + 8 <= self.max_value {
            (encode_whole(saved), None)
        } else {
            let manifest = self.write_parts(saved).await?;
            (encode_manifest(&manifest), Some(manifest.slot))
        };
        self.store.put(&self.key, value).await.with_context(|| format!("cannot store the sink state `{}` ({bytes} bytes)", self.key))?;
        // The slot is in use once a manifest naming it is stored: a failure
        // before leaves the other one named, and the next write goes here again.
        if slot.is_some() {
            *self.slot_in_use.lock().expect("not poisoned") = slot;
        }
        Ok(())
    }

    async fn write_parts(&self, saved: &Saved) -> Result<Manifest> {
        let in_use = *self.slot_in_use.lock().expect("not poisoned");
        let slot = match in_use {
            Some(slot) => 1 - slot,
            None => {
                tracing::info!(key = %self.key, bytes = saved.snapshot.len(), max = self.max_value, "The sink's state is larger than one NATS message; it is kept in parts.");
                0
            }
        };
        let chunks = saved.snapshot.chunks(self.max_value);
        let parts = u32::try_from(chunks.len()).context("the sink state has too many parts")?;
        for (n, chunk) in chunks.enumerate() {
            self.store
                .put(part_key(&self.key, slot, n), Bytes::copy_from_slice(chunk))
                .await
                .with_context(|| format!("cannot store part {n} of the sink state `{}`", self.key))?;
        }
        Ok(Manifest { sequence: saved.sequence, slot, parts, len: saved.snapshot.len() as u64, sha256: Sha256::digest(&saved.snapshot).into() })
    }

    async fn read_parts(&self, manifest: &Manifest) -> Result<Saved> {
        let mut snapshot = Vec::with_capacity(usize::try_from(manifest.len).unwrap_or(0));
        for n in 0..manifest.parts as usize {
            let key = part_key(&self.key, manifest.slot, n);
            let part = self.store.get(&key).await.with_context(|| format!("cannot read `{key}`"))?.with_context(|| format!("`{key}` is missing"))?;
            snapshot.extend_from_slice(&part);
        }
        if snapshot.len() as u64 != manifest.len || <[u8; 32]>::from(Sha256::digest(&snapshot)) != manifest.sha256 {
            bail!("its parts do not add up to what the manifest says ({} bytes read, {} expected, or a different hash)", snapshot.len(), manifest.len);
        }
        Ok(Saved { sequence: manifest.sequence, snapshot })
    }
}

/// A key NATS accepts: letters, digits and `-_=./`; anything else becomes `_`.
fn key(pipeline: &str, stage: &str) -> String {
    format!("{pipeline}.{stage}").chars().map(|c| if c.is_ascii_alphanumeric() || "-_=./".contains(c) { c } else { '_' }).collect()
}

fn part_key(key: &str, slot: u8, n: usize) -> String {
    format!("{key}._part.{slot}.{n}")
}

fn encode_whole(saved: &Saved) -> Bytes {
    let mut buffer = BytesMut::with_capacity(12 + saved.snapshot.len());
    buffer.put_slice(WHOLE);
    buffer.put_u64(saved.sequence);
    buffer.put_slice(&saved.snapshot);
    buffer.freeze()
}

fn encode_manifest(manifest: &Manifest) -> Bytes {
    let mut buffer = BytesMut::with_capacity(MANIFEST_LEN);
    buffer.put_slice(IN_PARTS);
    buffer.put_u64(manifest.sequence);
    buffer.put_u8(manifest.slot);
    buffer.put_u32(manifest.parts);
    buffer.put_u64(manifest.len);
    buffer.put_slice(&manifest.sha256);
    buffer.freeze()
}

fn decode(value: &[u8]) -> Result<Value> {
    let header = value.get(..4).unwrap_or_default();
    if header == WHOLE && value.len() >= 12 {
        let mut rest = &value[4..];
        let sequence = rest.get_u64();
        return Ok(Value::Whole(Saved { sequence, snapshot: rest.to_vec() }));
    }
    if header == IN_PARTS && value.len() == MANIFEST_LEN {
        let mut rest = &value[4..];
        let (sequence, slot, parts, len) = (rest.get_u64(), rest.get_u8(), rest.get_u32(), rest.get_u64());
        if slot > 1 {
            bail!("its manifest names slot {slot}; there are two, 0 and 1");
        }
        let sha256 = rest.try_into().expect("32 bytes are left");
        return Ok(Value::InParts(Manifest { sequence, slot, parts, len, sha256 }));
    }
    bail!("it does not start with the {WHOLE:?} or {IN_PARTS:?} header, or is cut short");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_reads_back_as_written() {
        let saved = Saved { sequence: 1234, snapshot: b"{\"windows\":[]}".to_vec() };
        assert_eq!(decode(&encode_whole(&saved)).unwrap(), Value::Whole(saved));
        let manifest = Manifest { sequence: 99, slot: 1, parts: 3, len: 2_500_000, sha256: [7; 32] };
        assert_eq!(decode(&encode_manifest(&manifest)).unwrap(), Value::InParts(manifest));
        assert!(decode(b"{\"windows\":[]}").is_err());
        assert!(decode(b"SLS2 cut short").is_err());
        assert_eq!(key("storyforge alerts", "alert"), "storyforge_alerts.alert");
    }
}
