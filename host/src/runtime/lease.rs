//! One host at a time runs a pipeline that ends in a sink: the sink's state
//! is one instance's, and two hosts counting halves of one input into one
//! kept state would each overwrite the other's. Hosts that run the same such
//! pipeline (a fleet following one release, or two hosts given the same
//! file) compete for a lease, a key in the bucket `SLUICE_LEASES` named by
//! the pipeline and its state bucket. The holder runs the worker and renews
//! the lease every `RENEW`; the others stand by and take over when the
//! holder stops (it gives the lease back at once) or its lease expires
//! (`TTL` after its last renewal: a host that died, hung or was cut off).
//!
//! A holder that cannot renew stops its worker well before its lease can
//! have passed to another host: the worker asks the [`Fence`] before each
//! batch and tick whether the lease is still good, which it is for
//! `GOOD_FOR` after each renewal, half of `TTL`. A host frozen past that
//! (SIGSTOP, a stalled VM) finds its fence closed when it runs again and
//! starts nothing more; a batch it was in the middle of is finished, since
//! its outputs are already out and its state and acks must follow them.
//! That batch is the one window in which two hosts may both write the
//! state. A host that lost touch with NATS and finds its own entry still
//! there (nobody took the lease meanwhile) takes it up again at once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_nats::jetstream::kv;
use tokio::sync::watch;

use crate::nats::Connection;

pub const LEASES: &str = "SLUICE_LEASES";
/// How long a lease lives without a renewal.
pub const TTL: Duration = Duration::from_secs(10);
/// How often the holder renews it, and a host standing by tries to take it.
const RENEW: Duration = Duration::from_secs(1);
/// How long after a renewal the holder counts its lease good.
const GOOD_FOR: Duration = Duration::from_secs(5);

/// Whether this host still holds the lease its worker runs under.
#[derive(Clone, Debug)]
pub struct Fence(Arc<Mutex<Instant>>);

impl Fence {
    fn until(until: Instant) -> Self {
        Self(Arc::new(Mutex::new(until)))
    }

    pub fn holds(&self) -> bool {
        Instant::now() < *self.0.lock().expect("fence lock")
    }

    fn extend(&self, until: Instant) {
        *self.0.lock().expect("fence lock") = until;
    }

    fn close(&self) {
        self.extend(Instant::now());
    }
}

/// A time no run reaches (a century on).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The lease's key for a pipeline whose sink keeps its state in `bucket`.
pub fn key(bucket: &str, pipeline: &str) -> String {
    format!("{bucket}.{pipeline}")
}

/// Runs the worker `start` gives, under the lease `key`, until `shutdown`:
/// waits for the lease, starts the worker with a fence and a stop switch of
/// its own, renews the lease, stops the worker when the lease is lost and
/// waits for it again. A worker that ends on its own ends this too.
pub async fn hold<F, W>(connection: Connection, pipeline: String, key: String, mut shutdown: watch::Receiver<bool>, start: F) -> Result<()>
where
    F: Fn(Fence, watch::Receiver<bool>) -> W,
    W: Future<Output = Result<()>> + Send + 'static,
{
    let config = kv::Config { bucket: LEASES.into(), history: 1, max_age: TTL, ..Default::default() };
    let bucket = match connection.key_value(config).await {
        Ok(bucket) => bucket,
        Err(error) => {
            // As the sink's state, which then lives in memory only: the pipeline runs, unguarded.
            tracing::error!(
                %pipeline, error = format!("{error:#}"),
                "Cannot keep the lease of the pipeline's sink in NATS (is JetStream on?); running it here without one: a second host running it would keep a state of its own."
            );
            return start(Fence::until(far_future()), shutdown).await;
        }
    };
    let me = format!("{}-{}", crate::release::host_name(), std::process::id());
    loop {
        let Some(mut revision) = acquire(&bucket, &pipeline, &key, &me, &mut shutdown).await else { return Ok(()) };
        tracing::info!(%pipeline, lease = %key, "This host holds the lease of the pipeline's sink; running it.");
        let fence = Fence::until(Instant::now() + GOOD_FOR);
        let (stop, stopped) = watch::channel(false);
        let mut worker = tokio::spawn(start(fence.clone(), stopped));
        let mut renew = tokio::time::interval(RENEW);
        renew.tick().await;
        let lost = loop {
            tokio::select! {
                _ = shutdown.changed() => break None,
                ended = &mut worker => {
                    if !fence.holds() {
                        // It stopped at its fence: this host did not run for a while.
                        break Some("it ran out while this host was not running".to_string());
                    }
                    release(&bucket, &key, revision).await;
                    return ended.unwrap_or_else(|e| Err(anyhow::anyhow!("the worker panicked: {e}")));
                }
                _ = renew.tick() => {
                    let at = Instant::now();
                    match bucket.update(&key, me.clone().into(), revision).await {
                        Ok(next) => {
                            revision = next;
                            fence.extend(at + GOOD_FOR);
                        }
                        Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => break Some("another host holds it now".to_string()),
                        Err(error) if !fence.holds() => break Some(format!("it could not be renewed for {}s: {error}", GOOD_FOR.as_secs())),
                        Err(error) => tracing::warn!(%pipeline, lease = %key, %error, "Cannot renew the lease of the pipeline's sink; trying again."),
                    }
                }
            }
        };
        match lost {
            None => {
                let _ = stop.send(true);
                let _ = worker.await;
                release(&bucket, &key, revision).await;
                return Ok(());
            }
            Some(reason) => {
                // The worker sees the closed fence before its next batch or tick
                // and stops; a batch under way is finished first.
                fence.close();
                tracing::error!(%pipeline, lease = %key, %reason, "This host lost the lease of the pipeline's sink; stopping its worker (another host takes over).");
                if !worker.is_finished() {
                    tokio::select! {
                        _ = &mut worker => {}
                        _ = shutdown.changed() => {
                            let _ = stop.send(true);
                            let _ = worker.await;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// Waits until this host holds the lease; `None` if `shutdown` came first.
async fn acquire(bucket: &kv::Store, pipeline: &str, key: &str, me: &str, shutdown: &mut watch::Receiver<bool>) -> Option<u64> {
    let mut standing_by = false;
    loop {
        if *shutdown.borrow() {
            return None;
        }
        match bucket.create(key, me.to_string().into()).await {
            Ok(revision) => return Some(revision),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = bucket.entry(key).await.ok().flatten();
                let holder = entry.as_ref().map(|e| String::from_utf8_lossy(&e.value).into_owned()).unwrap_or_default();
                // Still this process's own entry: nobody took the lease meanwhile.
                if let Some(entry) = entry.filter(|_| holder == me)
                    && let Ok(revision) = bucket.update(key, me.to_string().into(), entry.revision).await
                {
                    return Some(revision);
                }
                if !standing_by {
                    tracing::info!(%pipeline, lease = %key, %holder, "Another host runs the pipeline's sink; standing by to take over.");
                    standing_by = true;
                }
            }
            Err(error) => tracing::warn!(%pipeline, lease = %key, %error, "Cannot take the lease of the pipeline's sink; trying again."),
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            () = tokio::time::sleep(RENEW) => {}
        }
    }
}

/// Gives the lease back, so that a host standing by takes over at once.
async fn release(bucket: &kv::Store, key: &str, revision: u64) {
    if let Err(error) = bucket.delete_expect_revision(key, Some(revision)).await {
        tracing::warn!(lease = %key, %error, "Cannot give the lease of the pipeline's sink back; another host takes over once it expires.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_until_its_time_and_closes_at_once() {
        let fence = Fence::until(Instant::now() + Duration::from_secs(60));
        assert!(fence.holds());
        let worker = fence.clone();
        fence.close();
        assert!(!worker.holds(), "the worker's copy closes with the holder's");
        fence.extend(Instant::now() + Duration::from_secs(60));
        assert!(worker.holds());
    }
}
