//! Releases: a pipeline file and every file it uses, published to NATS so
//! that every host can run the same thing.
//!
//! - `manifest`: what a release says, the files it carries, and laying them
//!   out on a host.
//! - `store`: the key-value bucket of manifests (its history is the release
//!   history) and the object store of files, one per content.
//! - `follow`: a host following a release (`sluice run --release`).
//! - `status`: what each host runs, in a bucket whose entries expire.
//!
//! `sluice deploy` checks a file exactly as `validate` does and publishes
//! nothing unless it passes; two deploys racing on one name cannot both
//! land (compare-and-set on the revision). `sluice releases` lists the
//! history, and `sluice rollback` publishes an earlier revision again as a
//! new one: history is never rewritten. Secrets never travel: a release
//! names the variables its stages read, and each host reads its own.

pub mod follow;
pub mod manifest;
pub mod status;
pub mod store;

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::nats::Connection;
use manifest::Manifest;
use store::{Lost, ReleaseStore, Revision};

/// Who and where a release is deployed from, for its history.
pub struct Deployer {
    pub user: String,
    pub host: String,
    pub message: String,
}

impl Deployer {
    /// The user from `USER` (or `LOGNAME`), the machine's host name.
    pub fn here(message: String) -> Self {
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
        Self { user, host: host_name(), message }
    }
}

/// Publishes a checked pipeline file as the next revision of release `name`.
/// `versions` are its pipelines' version ids. Returns the revision.
pub async fn deploy(
    connection: &Connection,
    path: &Path,
    file: &crate::config::PipelineFile,
    versions: Vec<(String, String)>,
    name: &str,
    deployer: Deployer,
) -> Result<u64> {
    let store = ReleaseStore::open(connection).await?;
    // Read before anything is uploaded: a deploy that lands meanwhile wins.
    let expected = store.current(name).await?.map(|current| current.revision);
    let carried = manifest::carried(file)?;
    let uploaded = store.upload(&carried).await?;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).context("the pipeline file has no name")?.to_string();
    let manifest = Manifest {
        format: manifest::FORMAT,
        name: name.to_string(),
        file_name,
        text,
        origin: manifest::origin(file)?.to_string_lossy().into_owned(),
        artifacts: carried.into_iter().map(|c| c.artifact).collect(),
        versions: versions.into_iter().collect(),
        message: deployer.message,
        user: deployer.user,
        host: deployer.host,
        time: now(),
    };
    let files = manifest.artifacts.len();
    let revision = land(&store, &manifest, expected).await?;
    tracing::info!(release = name, revision, files, uploaded, "Release published.");
    Ok(revision)
}

/// Publishes an earlier revision's manifest again, as a new revision: the
/// one before the current, or `to`.
pub async fn rollback(connection: &Connection, name: &str, to: Option<u64>, deployer: Deployer) -> Result<(u64, u64)> {
    let store = ReleaseStore::open(connection).await?;
    let history = store.history(name).await?;
    let Some(current) = history.last() else { bail!("there is no release `{name}`") };
    let target = match to {
        Some(to) => history.iter().find(|r| r.revision == to).with_context(|| {
            let kept: Vec<String> = history.iter().map(|r| r.revision.to_string()).collect();
            format!("release `{name}` keeps no revision {to} (it keeps {})", kept.join(", "))
        })?,
        None => {
            history.iter().rev().nth(1).with_context(|| format!("release `{name}` has only revision {}: there is nothing to roll back to", current.revision))?
        }
    };
    for artifact in &target.manifest.artifacts {
        if !store.holds(&artifact.sha256).await {
            bail!("revision {} of `{name}` needs {} ({}), which the object store no longer holds", target.revision, artifact.path, artifact.sha256);
        }
    }
    let message = if deployer.message.is_empty() { format!("rollback to revision {}", target.revision) } else { deployer.message };
    let manifest = Manifest { message, user: deployer.user, host: deployer.host, time: now(), ..target.manifest.clone() };
    let revision = land(&store, &manifest, Some(current.revision)).await?;
    tracing::info!(release = name, revision, to = target.revision, "Release rolled back.");
    Ok((revision, target.revision))
}

/// Every kept revision of a release, oldest first.
pub async fn history(connection: &Connection, name: &str) -> Result<Vec<Revision>> {
    let history = ReleaseStore::open(connection).await?.history(name).await?;
    if history.is_empty() {
        bail!("there is no release `{name}`");
    }
    Ok(history)
}

/// Removes the stored files that no kept revision of any release uses,
/// except those uploaded within `grace` (a deploy that uploaded them may
/// not have published its manifest yet).
pub async fn prune(connection: &Connection, grace: std::time::Duration) -> Result<store::Pruned> {
    let pruned = ReleaseStore::open(connection).await?.prune(grace).await?;
    tracing::info!(
        releases = pruned.releases,
        removed = pruned.removed,
        bytes = pruned.bytes,
        kept = pruned.kept,
        recent = pruned.recent,
        "Release files pruned."
    );
    Ok(pruned)
}

/// Publishes with compare-and-set; a deploy that landed first wins, and the
/// error names it.
async fn land(store: &ReleaseStore, manifest: &Manifest, expected: Option<u64>) -> Result<u64> {
    match store.publish(manifest, expected).await? {
        Ok(revision) => Ok(revision),
        Err(Lost { current }) => {
            let by = match store.current(&manifest.name).await? {
                Some(winner) => format!(" by {}@{} at {}: {:?}", winner.manifest.user, winner.manifest.host, winner.manifest.time, winner.manifest.message),
                None => String::new(),
            };
            bail!(
                "refused: release `{}` moved to revision {current}{by} while this deploy was being prepared (it expected {}); nothing was published, deploy again",
                manifest.name,
                expected.map_or_else(|| "no revision".to_string(), |r| format!("revision {r}"))
            )
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    if ok { String::from_utf8_lossy(&buffer[..end]).into_owned() } else { "unknown".into() }
}
