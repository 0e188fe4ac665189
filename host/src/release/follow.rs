//! A host following a release: the current revision laid out on disk at
//! start, then each new revision as it lands, for `sluice run --release`.
//! Every file is checked against its SHA-256 before the revision is handed
//! on; a revision that cannot be fetched is reported, and the host keeps
//! what it runs.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::kv;
use futures::StreamExt;

use super::store::{ReleaseStore, Revision, revision};
use crate::nats::Connection;

pub struct Follower {
    pub name: String,
    store: ReleaseStore,
    watch: kv::Watch,
    /// Where revisions are laid out, one folder each; removed on exit.
    dir: tempfile::TempDir,
    /// The newest revision handed on (laid out or refused).
    seen: u64,
}

/// A revision on disk: its pipeline file, ready to load.
pub struct Laid {
    pub revision: u64,
    pub file: PathBuf,
}

impl Follower {
    /// Opens the release and lays out its current revision.
    pub async fn start(connection: &Connection, name: &str) -> Result<(Self, Laid)> {
        let store = ReleaseStore::open(connection).await?;
        let current =
            store.current(name).await?.with_context(|| format!("there is no release `{name}`: deploy it first with `sluice deploy FILE --name {name}`"))?;
        let watch = store.watch(name).await?;
        let dir = tempfile::Builder::new().prefix("sluice-release-").tempdir().context("cannot create a folder for the release's files")?;
        let follower = Self { name: name.to_string(), store, watch, dir, seen: current.revision };
        let laid = follower.lay_out(&current).await?;
        Ok((follower, laid))
    }

    /// The next revision that lands, laid out; `Err((revision, reason))` for
    /// one that cannot be fetched. Waits until one lands.
    pub async fn next(&mut self) -> Result<Laid, (u64, String)> {
        loop {
            let entry = match self.watch.next().await {
                Some(Ok(entry)) => entry,
                Some(Err(error)) => {
                    tracing::warn!(release = %self.name, %error, "Watching the release failed; watching on.");
                    continue;
                }
                None => return std::future::pending().await,
            };
            if entry.revision <= self.seen || entry.operation != kv::Operation::Put {
                continue;
            }
            self.seen = entry.revision;
            let laid = match revision(entry.revision, &entry.value, &self.name) {
                Ok(revision) => self.lay_out(&revision).await,
                Err(error) => Err(error),
            };
            return laid.map_err(|error| (entry.revision, format!("{error:#}")));
        }
    }

    async fn lay_out(&self, revision: &Revision) -> Result<Laid> {
        let mut contents: HashMap<&str, Vec<u8>> = HashMap::new();
        for artifact in &revision.manifest.artifacts {
            if !contents.contains_key(artifact.sha256.as_str()) {
                let content = self.store.fetch(&artifact.sha256).await.with_context(|| format!("revision {}: {}", revision.revision, artifact.path))?;
                contents.insert(&artifact.sha256, content);
            }
        }
        let root = self.dir.path().join(format!("revision-{}", revision.revision));
        let file = super::manifest::lay_out(&revision.manifest, &root, |artifact| match contents.get(artifact.sha256.as_str()) {
            Some(content) => Ok(content.clone()),
            None => bail!("{} was not fetched", artifact.path),
        })?;
        Ok(Laid { revision: revision.revision, file })
    }
}
