//! Compiled components kept on disk, so that a `validate`, `test` or `run`
//! does not compile again what an earlier one compiled: an interpreter
//! component (a Python or JavaScript plugin) takes tens of seconds to
//! compile, a Rust one most of a second.
//!
//! A file is named by the SHA-256 of the component's bytes and a hash of the
//! engine's configuration (wasmtime's own compatibility hash, which covers
//! its version and settings), and holds the compiled code followed by its
//! SHA-256, checked before the code is used. The folder is
//! `$SLUICE_CACHE_DIR` (`off` turns the cache off), else
//! `$XDG_CACHE_HOME/sluice/compiled`, else `~/.cache/sluice/compiled`; it is
//! created for this user alone, and one that others may write is not used:
//! what is read from it runs as native code.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct DiskCache {
    dir: PathBuf,
    /// The engine configuration's part of every file name.
    engine_key: String,
}

impl DiskCache {
    /// The cache for `engine`, or `None` if it is turned off or its folder
    /// cannot be used (which is said once, in the log).
    pub fn open(engine: &Engine) -> Option<Self> {
        let dir = match std::env::var_os("SLUICE_CACHE_DIR") {
            Some(dir) if dir.is_empty() || dir == "off" => return None,
            Some(dir) => PathBuf::from(dir),
            None => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
                base.join("sluice/compiled")
            }
        };
        if let Err(error) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
            tracing::warn!(folder = %dir.display(), %error, "Cannot create the compiled-code cache; compiling every component.");
            return None;
        }
        match std::fs::metadata(&dir) {
            // SAFETY: getuid has no preconditions and cannot fail.
            Ok(meta) if meta.uid() == unsafe { libc::getuid() } && meta.permissions().mode() & 0o022 == 0 => {}
            _ => {
                tracing::warn!(folder = %dir.display(), "The compiled-code cache folder is not this user's alone; not using it.");
                return None;
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Some(Self { dir, engine_key: format!("{:016x}", hasher.finish()) })
    }

    fn path(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}-{}.cwasm", crate::pipeline::hex(digest), self.engine_key))
    }

    /// The component compiled earlier from the bytes of this digest, if the
    /// cache holds it whole.
    pub fn load(&self, engine: &Engine, digest: &[u8; 32]) -> Option<Component> {
        let path = self.path(digest);
        let kept = std::fs::read(&path).ok()?;
        let intact = kept.len() > 32 && {
            let (code, sum) = kept.split_at(kept.len() - 32);
            Sha256::digest(code).as_slice() == sum
        };
        // SAFETY: the code was written by `store` for an engine of this
        // configuration (its hash is in the name), into a folder only this
        // user can write, and is whole (its SHA-256 matches).
        let loaded = if intact { unsafe { Component::deserialize(engine, &kept[..kept.len() - 32]) }.ok() } else { None };
        if loaded.is_none() {
            tracing::warn!(file = %path.display(), "A compiled component in the cache cannot be used; compiling it again.");
            let _ = std::fs::remove_file(&path);
        }
        loaded
    }

    /// Keeps a compiled component for the next time; a failure only costs
    /// that compile again.
    pub fn store(&self, digest: &[u8; 32], component: &Component) {
        let Ok(mut code) = component.serialize() else { return };
        let sum = Sha256::digest(&code);
        code.extend_from_slice(&sum);
        let path = self.path(digest);
        let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
        let written = std::fs::write(&temporary, &code).and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            tracing::debug!(file = %path.display(), %error, "Cannot keep a compiled component in the cache.");
        }
    }
}
