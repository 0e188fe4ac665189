//! Watches the pipeline file and the component files it uses, and says when
//! they changed (once per burst of changes: an editor or a build writes a
//! file in several steps).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last change before a reload starts.
const SETTLE: Duration = Duration::from_millis(300);

pub struct FileWatcher {
    watcher: RecommendedWatcher,
    changes: mpsc::UnboundedReceiver<PathBuf>,
    /// The files of interest; changes to other files in their folders are ignored.
    files: BTreeSet<PathBuf>,
    /// Folders in which any change is of interest (a stage's granted files).
    trees: BTreeSet<PathBuf>,
    /// What the watcher itself is watching.
    watched: BTreeSet<(PathBuf, bool)>,
}

impl FileWatcher {
    pub fn new() -> Result<Self> {
        let (sender, changes) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if !event.kind.is_access() => {
                for path in event.paths {
                    let _ = sender.send(path);
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "File watching reported an error."),
        })
        .context("cannot start watching files")?;
        Ok(Self { watcher, changes, files: BTreeSet::new(), trees: BTreeSet::new(), watched: BTreeSet::new() })
    }

    /// Watches exactly these files, and everything below these folders, from
    /// now on. A file's folder is watched rather than the file, because
    /// editors and deploys replace a file rather than write it in place.
    pub fn watch(&mut self, files: impl IntoIterator<Item = PathBuf>, trees: impl IntoIterator<Item = PathBuf>) -> Result<()> {
        self.files = files.into_iter().map(|f| absolute(&f)).collect();
        self.trees = trees.into_iter().map(|t| absolute(&t)).collect();
        let wanted: BTreeSet<(PathBuf, bool)> =
            self.files.iter().filter_map(|f| f.parent().map(|p| (p.to_path_buf(), false))).chain(self.trees.iter().map(|t| (t.clone(), true))).collect();
        for (gone, _) in self.watched.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for (new, recursive) in wanted.difference(&self.watched) {
            let mode = if *recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
            self.watcher.watch(new, mode).with_context(|| format!("cannot watch {}", new.display()))?;
        }
        self.watched = wanted;
        Ok(())
    }

    fn wanted(&self, path: &Path) -> bool {
        let path = absolute(path);
        self.files.contains(&path) || self.trees.iter().any(|t| path.starts_with(t))
    }

    /// Waits for a change to a watched file, then for the burst to settle.
    pub async fn changed(&mut self) -> Option<PathBuf> {
        let first = loop {
            let path = self.changes.recv().await?;
            if self.wanted(&path) {
                break path;
            }
        };
        while let Ok(Some(_)) = tokio::time::timeout(SETTLE, self.changes.recv()).await {}
        Some(first)
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
