//! Where releases live in NATS: manifests in a key-value bucket, one key
//! per release name, whose history is the release history; the files they
//! name in an object store, one object per content (named by its SHA-256),
//! so a file is uploaded once whatever the number of releases that use it.

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{kv, object_store};
use futures::StreamExt;

use super::manifest::{Carried, FORMAT, Manifest};
use crate::nats::Connection;

/// The buckets, shared by every release.
pub const MANIFESTS: &str = "SLUICE_RELEASES";
pub const ARTIFACTS: &str = "SLUICE_ARTIFACTS";
/// Revisions kept per release (the most a NATS key-value bucket keeps).
pub const HISTORY: i64 = 64;

pub struct ReleaseStore {
    manifests: kv::Store,
    artifacts: object_store::ObjectStore,
}

/// One revision of a release.
pub struct Revision {
    pub revision: u64,
    pub manifest: Manifest,
}

/// Why a publish did not happen: another deploy got there first.
#[derive(Debug)]
pub struct Lost {
    pub current: u64,
}

impl ReleaseStore {
    /// Opens the buckets, creating them if needed.
    pub async fn open(connection: &Connection) -> Result<Self> {
        let js = &connection.jetstream;
        let manifests = connection
            .key_value(kv::Config { bucket: MANIFESTS.into(), history: HISTORY, description: "sluice: release manifests".into(), ..Default::default() })
            .await?;
        let artifacts = match js.get_object_store(ARTIFACTS).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: ARTIFACTS.into(),
                    description: Some("sluice: release files by SHA-256".into()),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot open or create the object store {ARTIFACTS}"))?,
        };
        Ok(Self { manifests, artifacts })
    }

    /// The current revision of a release, if it has one.
    pub async fn current(&self, name: &str) -> Result<Option<Revision>> {
        let entry = self.manifests.entry(name).await.with_context(|| format!("cannot read release `{name}`"))?;
        entry.filter(|e| e.operation == kv::Operation::Put).map(|e| revision(e.revision, &e.value, name)).transpose()
    }

    /// Every kept revision of a release, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<Revision>> {
        let mut entries = self.manifests.history(name).await.with_context(|| format!("cannot read the history of release `{name}`"))?;
        let mut revisions = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.with_context(|| format!("cannot read the history of release `{name}`"))?;
            if entry.operation == kv::Operation::Put {
                revisions.push(revision(entry.revision, &entry.value, name)?);
            }
        }
        Ok(revisions)
    }

    /// Uploads the files the store does not hold yet; returns how many it uploaded.
    pub async fn upload(&self, carried: &[Carried]) -> Result<usize> {
        let mut uploaded = 0;
        for file in carried {
            if self.holds(&file.artifact.sha256).await {
                continue;
            }
            let mut content = file.content.as_slice();
            self.artifacts.put(file.artifact.sha256.as_str(), &mut content).await.with_context(|| format!("cannot upload {}", file.artifact.path))?;
            uploaded += 1;
        }
        Ok(uploaded)
    }

    /// The content of the file of this hash (the object store checks its digest too).
    pub async fn fetch(&self, sha256: &str) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut object = self.artifacts.get(sha256).await.with_context(|| format!("the object store holds no file {sha256}"))?;
        let mut content = Vec::new();
        object.read_to_end(&mut content).await.with_context(|| format!("cannot read the file {sha256} from the object store"))?;
        Ok(content)
    }

    /// The release's revisions from the current one on, as they land.
    pub async fn watch(&self, name: &str) -> Result<kv::Watch> {
        self.manifests.watch_with_history(name).await.with_context(|| format!("cannot watch release `{name}`"))
    }

    /// Whether the store holds the file of this hash (a pruned file leaves
    /// a deletion marker behind, which `info` still returns).
    pub async fn holds(&self, sha256: &str) -> bool {
        self.artifacts.info(sha256).await.is_ok_and(|info| !info.deleted)
    }

    /// Removes the files that no kept revision of any release uses (files
    /// are shared between releases, so every release is looked at), except
    /// those uploaded less than `grace` ago: a deploy uploads its files
    /// before it publishes the manifest that names them.
    pub async fn prune(&self, grace: std::time::Duration) -> Result<Pruned> {
        let mut used = std::collections::BTreeSet::new();
        let mut keys = self.manifests.keys().await.context("cannot list the releases")?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.context("cannot list the releases")?);
        }
        for name in &names {
            for kept in self.history(name).await? {
                used.extend(kept.manifest.artifacts.into_iter().map(|a| a.sha256));
            }
        }
        let mut objects = self.artifacts.list().await.with_context(|| format!("cannot list the object store {ARTIFACTS}"))?;
        let mut unused = Vec::new();
        let mut pruned = Pruned::default();
        let newest = std::time::SystemTime::now().checked_sub(grace).unwrap_or(std::time::UNIX_EPOCH);
        let newest = newest.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        while let Some(object) = objects.next().await {
            let object = object.with_context(|| format!("cannot list the object store {ARTIFACTS}"))?;
            if object.deleted {
                continue;
            }
            if used.contains(&object.name) {
                pruned.kept += 1;
            } else if object.modified.is_some_and(|m| m.unix_timestamp() > newest) {
                pruned.recent += 1;
            } else {
                unused.push((object.name, object.size as u64));
            }
        }
        for (name, bytes) in unused {
            self.artifacts.delete(&name).await.with_context(|| format!("cannot remove the file {name} from the object store"))?;
            pruned.removed += 1;
            pruned.bytes += bytes;
        }
        pruned.releases = names.len();
        Ok(pruned)
    }

    /// Publishes `manifest` as the release's next revision, provided the
    /// release is still at `expected` (`None`: it has no revision yet).
    /// Returns the new revision, or the one it lost to.
    pub async fn publish(&self, manifest: &Manifest, expected: Option<u64>) -> Result<Result<u64, Lost>> {
        let value = serde_json::to_vec(manifest).expect("a manifest serialises");
        let name = &manifest.name;
        let published = match expected {
            None => self.manifests.create(name, value.into()).await.map_err(|e| e.to_string()),
            Some(revision) => self.manifests.update(name, value.into(), revision).await.map_err(|e| e.to_string()),
        };
        match published {
            Ok(revision) => Ok(Ok(revision)),
            Err(error) => match self.current(name).await? {
                Some(current) if Some(current.revision) != expected => Ok(Err(Lost { current: current.revision })),
                _ => bail!("cannot publish release `{name}`: {error}"),
            },
        }
    }
}

/// What a prune did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Releases whose kept revisions were looked at.
    pub releases: usize,
    /// Files removed, and their bytes.
    pub removed: usize,
    pub bytes: u64,
    /// Files a kept revision uses.
    pub kept: usize,
    /// Unused files kept because they were uploaded within the grace period.
    pub recent: usize,
}

/// A revision read from an entry of the bucket.
pub fn revision(revision: u64, value: &[u8], name: &str) -> Result<Revision> {
    let manifest: Manifest =
        serde_json::from_slice(value).with_context(|| format!("revision {revision} of release `{name}` is not a manifest sluice reads"))?;
    if manifest.format != FORMAT {
        bail!("revision {revision} of release `{name}` has manifest format {}; this sluice reads format {FORMAT}", manifest.format);
    }
    Ok(Revision { revision, manifest })
}
