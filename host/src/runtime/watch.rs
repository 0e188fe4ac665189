//! Watches the pipeline file and the component files it uses, and says when
//! they changed (once per burst of changes: an editor or a build writes a
//! file in several steps).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last change to a watched file before a reload starts.
const SETTLE: Duration = Duration::from_millis(300);
/// A file that never stops changing is reloaded after this long anyway.
const MAX_SETTLE: Duration = Duration::from_secs(5);

pub struct FileWatcher {
    watcher: RecommendedWatcher,
    changes: mpsc::UnboundedReceiver<PathBuf>,
    /// The files of interest; changes to other files in their folders are ignored.
    files: BTreeSet<PathBuf>,
    /// Folders in which any change is of interest (a stage's granted files).
    trees: BTreeSet<PathBuf>,
    /// What the watcher itself is watching.
    watched: BTreeSet<(PathBuf, bool)>,
    /// The first change of a burst still settling, and when to stop waiting
    /// for quiet: kept here, so that a `changed` given up half-way (the
    /// runtime's loop woken by something else) goes on where it stopped.
    settling: Option<(PathBuf, tokio::time::Instant)>,
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
        Ok(Self { watcher, changes, files: BTreeSet::new(), trees: BTreeSet::new(), watched: BTreeSet::new(), settling: None })
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

    /// Waits for a change to a watched file, then for its burst to settle:
    /// quiet from the watched files for [`SETTLE`], or [`MAX_SETTLE`] in
    /// all. Other files changing in the same folders (a log beside the
    /// pipeline file, a server's data) neither start nor hold it back.
    /// Cancel-safe: a change seen by a call dropped before it returned is
    /// the next call's.
    pub async fn changed(&mut self) -> Option<PathBuf> {
        if self.settling.is_none() {
            let first = self.next_wanted().await?;
            self.settling = Some((first, tokio::time::Instant::now() + MAX_SETTLE));
        }
        let give_up = self.settling.as_ref().map(|(_, at)| *at)?;
        loop {
            let quiet_until = (tokio::time::Instant::now() + SETTLE).min(give_up);
            match tokio::time::timeout_at(quiet_until, self.next_wanted()).await {
                Ok(Some(_)) if tokio::time::Instant::now() < give_up => continue,
                _ => return self.settling.take().map(|(first, _)| first),
            }
        }
    }

    async fn next_wanted(&mut self) -> Option<PathBuf> {
        loop {
            let path = self.changes.recv().await?;
            if self.wanted(&path) {
                return Some(path);
            }
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_is_seen_while_other_files_of_its_folder_never_stop_changing() {
        let folder = tempfile::tempdir().unwrap();
        let (watched, chatty) = (folder.path().join("pipeline.toml"), folder.path().join("server.log"));
        std::fs::write(&watched, "a").unwrap();
        let mut watcher = FileWatcher::new().unwrap();
        watcher.watch([watched.clone()], []).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (chatty, stop) = (chatty.clone(), stop.clone());
            std::thread::spawn(move || {
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    std::fs::write(&chatty, format!("line {n}")).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(&watched, "b").unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(2), watcher.changed()).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(seen.expect("seen within 2 s, well before MAX_SETTLE").as_deref(), Some(absolute(&watched).as_path()));
    }

    #[tokio::test]
    async fn a_change_seen_by_a_wait_given_up_half_way_is_the_next_waits() {
        let folder = tempfile::tempdir().unwrap();
        let watched = folder.path().join("pipeline.toml");
        std::fs::write(&watched, "a").unwrap();
        let mut watcher = FileWatcher::new().unwrap();
        watcher.watch([watched.clone()], []).unwrap();
        std::fs::write(&watched, "b").unwrap();
        // Given up while the burst settles, as the runtime's loop does when
        // its progress report is due.
        assert!(tokio::time::timeout(SETTLE / 2, watcher.changed()).await.is_err(), "still settling");
        let seen = tokio::time::timeout(Duration::from_secs(2), watcher.changed()).await;
        assert_eq!(seen.expect("the change is not lost").as_deref(), Some(absolute(&watched).as_path()));
    }
}
