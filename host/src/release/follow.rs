//! A host following a release: the current revision laid out on disk at
//! start, then each new revision as it lands, for `sluice run --release`.
//! Every file is checked against its SHA-256 before the revision is handed
//! on; a revision that cannot be fetched is reported, and the host keeps
//! what it runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::kv;
use futures::StreamExt;

use super::store::{ReleaseStore, Revision, revision};
use crate::nats::Connection;

/// How often a follower looks at the current revision when its watch is quiet.
const POLL: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Follower {
    name: String,
    store: ReleaseStore,
    watch: kv::Watch,
    /// Where revisions are laid out, one folder each; removed on exit.
    dir: tempfile::TempDir,
    /// The newest revision handed on (laid out or refused).
    seen: u64,
}

/// A revision on disk: its pipeline file, ready to load with
/// [`Laid::load`].
pub struct Laid {
    pub revision: u64,
    pub file: PathBuf,
    /// The folder it was deployed from (absolute paths in it are taken from there).
    pub origin: Option<PathBuf>,
}

impl Laid {
    pub fn load(&self) -> Result<crate::config::PipelineFile> {
        crate::config::load_moved(&self.file, self.origin.as_deref())
    }
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
        let laid = lay_out(&follower.store, follower.dir.path(), &current).await?;
        Ok((follower, laid))
    }

    /// The folder every revision is laid out under, for [`tidy`].
    pub fn folder(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The next revision that lands, laid out; `Err((revision, reason))` for
    /// one that cannot be fetched. Waits until one lands. The watch is
    /// backed by a look at the current revision every `POLL`, and opened
    /// again when it ends, so a host that was cut off or stopped while a
    /// revision landed catches up.
    pub async fn next(&mut self) -> Result<Laid, (u64, String)> {
        loop {
            let landed = match tokio::time::timeout(POLL, self.watch.next()).await {
                Ok(Some(Ok(entry))) if entry.operation == kv::Operation::Put => {
                    revision(entry.revision, &entry.value, &self.name).map_err(|e| (entry.revision, e))
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(error))) => {
                    tracing::warn!(release = %self.name, %error, "Watching the release failed; watching it again.");
                    self.rewatch().await;
                    continue;
                }
                Ok(None) => {
                    self.rewatch().await;
                    continue;
                }
                Err(_quiet) => match self.store.current(&self.name).await {
                    Ok(Some(current)) => Ok(current),
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(release = %self.name, error = format!("{error:#}"), "Cannot read the release's current revision; trying again.");
                        continue;
                    }
                },
            };
            let number = match &landed {
                Ok(revision) => revision.revision,
                Err((number, _)) => *number,
            };
            if number <= self.seen {
                continue;
            }
            self.seen = number;
            return match landed {
                Ok(revision) => lay_out(&self.store, self.dir.path(), &revision).await.map_err(|error| (number, format!("{error:#}"))),
                Err((_, error)) => Err((number, format!("{error:#}"))),
            };
        }
    }

    /// Follows the release in a task of its own, handing each revision on
    /// over the channel: `next` is not to be cancelled half way (a revision
    /// seen but not yet laid out would be lost), and a `select!` would.
    pub fn spawn(mut self) -> tokio::sync::mpsc::Receiver<Result<Laid, (u64, String)>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                // A host that stops drops the receiver; what `next` was doing then no longer matters.
                let next = tokio::select! {
                    next = self.next() => next,
                    () = sender.closed() => break,
                };
                if sender.send(next).await.is_err() {
                    break;
                }
            }
        });
        receiver
    }

    async fn rewatch(&mut self) {
        match self.store.watch(&self.name).await {
            Ok(watch) => self.watch = watch,
            Err(error) => {
                tracing::warn!(release = %self.name, error = format!("{error:#}"), "Cannot watch the release; looking at it every few seconds meanwhile.");
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// Removes the folders of revisions older than `handled` that hold none of
/// `in_use` (the granted folders that running versions, or versions just
/// swapped out and perhaps finishing a batch, read at run time; components
/// are compiled into memory and need no file). Newer revisions are left
/// alone: the follower may be laying one out.
pub fn tidy(dir: &Path, handled: u64, in_use: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let number = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("revision-")).and_then(|n| n.parse::<u64>().ok());
        let Some(number) = number else { continue };
        if number >= handled || in_use.iter().any(|folder| folder.starts_with(&path)) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::debug!(revision = number, folder = %path.display(), "Removed the files of a revision no longer run."),
            Err(error) => tracing::warn!(revision = number, folder = %path.display(), %error, "Cannot remove the files of a revision no longer run."),
        }
    }
}

/// Fetches a revision's files and lays them out in a folder of its own under `dir`.
async fn lay_out(store: &ReleaseStore, dir: &Path, revision: &Revision) -> Result<Laid> {
    let mut contents: HashMap<&str, Vec<u8>> = HashMap::new();
    for artifact in &revision.manifest.artifacts {
        if !contents.contains_key(artifact.sha256.as_str()) {
            let content = store.fetch(&artifact.sha256).await.with_context(|| format!("revision {}: {}", revision.revision, artifact.path))?;
            contents.insert(&artifact.sha256, content);
        }
    }
    let root = dir.join(format!("revision-{}", revision.revision));
    let file = super::manifest::lay_out(&revision.manifest, &root, |artifact| match contents.get(artifact.sha256.as_str()) {
        Some(content) => Ok(content.clone()),
        None => bail!("{} was not fetched", artifact.path),
    })?;
    let origin = Some(&revision.manifest.origin).filter(|o| !o.is_empty()).map(PathBuf::from);
    Ok(Laid { revision: revision.revision, file, origin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_keeps_the_newer_revisions_and_those_a_running_version_reads() {
        let dir = tempfile::tempdir().unwrap();
        for revision in 1..=5 {
            std::fs::create_dir_all(dir.path().join(format!("revision-{revision}/up0/lists"))).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("other")).unwrap();
        // Revision 2's granted folder is still read; revision 4 is the one handled; 5 is being laid out.
        tidy(dir.path(), 4, &[dir.path().join("revision-2/up0/lists"), dir.path().join("revision-4/up0/lists")]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["other", "revision-2", "revision-4", "revision-5"]);
    }
}
