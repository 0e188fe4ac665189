//! A release's manifest: the pipeline file's text and every file it uses
//! (components, the files of granted folders), each named by its path
//! relative to the pipeline file's folder and by its SHA-256, plus who
//! deployed it, when and why. The files themselves travel separately, in an
//! object store, once per content.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::PipelineFile;
use crate::pipeline::hex;

/// The manifest's format; a host refuses one it does not know.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The release's name (the key it is kept under).
    pub name: String,
    /// The pipeline file's name and text, as deployed.
    pub file_name: String,
    pub text: String,
    /// The folder the pipeline file was deployed from, on the deploying
    /// machine: the text's absolute paths below or beside it name artifacts.
    #[serde(default)]
    pub origin: String,
    /// Every file the pipeline file uses, by path relative to its folder.
    pub artifacts: Vec<Artifact>,
    /// Each pipeline's version id, as `validate` computed it on the deploying machine.
    pub versions: BTreeMap<String, String>,
    pub message: String,
    pub user: String,
    pub host: String,
    /// RFC 3339.
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative to the pipeline file's folder, with `/` separators (`..` allowed).
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// A file a release will carry, read from disk.
pub struct Carried {
    pub artifact: Artifact,
    pub content: Vec<u8>,
}

/// Reads every file a checked pipeline file uses: each stage's component
/// and every file below each granted folder. Paths must lie below the
/// pipeline file's folder or beside it (through `..`), never absolute.
pub fn carried(file: &PipelineFile) -> Result<Vec<Carried>> {
    let base = origin(file)?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for stage in file.pipelines.iter().flat_map(|p| &p.stages) {
        paths.push(stage.component.clone());
        if let Some(folder) = &stage.files {
            walk(folder, &mut paths).with_context(|| format!("cannot read the folder {} granted to stage `{}`", folder.display(), stage.name))?;
        }
    }
    let mut carried: BTreeMap<String, Carried> = BTreeMap::new();
    for path in paths {
        let relative = relative_to(&base, &std::path::absolute(&path).with_context(|| format!("cannot locate {}", path.display()))?)?;
        if carried.contains_key(&relative) {
            continue;
        }
        let content = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let artifact = Artifact { path: relative.clone(), sha256: hex(&Sha256::digest(&content)), bytes: content.len() as u64 };
        carried.insert(relative, Carried { artifact, content });
    }
    Ok(carried.into_values().collect())
}

fn walk(folder: &Path, into: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, into)?;
        } else {
            into.push(path);
        }
    }
    Ok(())
}

/// The pipeline file's folder, absolute.
pub fn origin(file: &PipelineFile) -> Result<PathBuf> {
    let base = file.path.parent().unwrap_or(Path::new("."));
    std::path::absolute(if base.as_os_str().is_empty() { Path::new(".") } else { base }).context("cannot locate the pipeline file's folder")
}

/// `path` relative to `base`, both made lexically clean; `..` where `path`
/// lies beside `base`.
pub fn relative_to(base: &Path, path: &Path) -> Result<String> {
    let clean = |p: &Path| -> Vec<String> {
        let mut parts: Vec<String> = Vec::new();
        for component in p.components() {
            match component {
                Component::ParentDir if parts.last().is_some_and(|l| l != "..") => {
                    parts.pop();
                }
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                Component::ParentDir => parts.push("..".into()),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        parts
    };
    if path.is_absolute() != base.is_absolute() {
        bail!("{} is absolute; a release carries files by their place relative to the pipeline file", path.display());
    }
    let (base, path) = (clean(base), clean(path));
    let shared = base.iter().zip(&path).take_while(|(a, b)| a == b).count();
    let mut relative: Vec<String> = std::iter::repeat_n("..".to_string(), base.len() - shared).collect();
    relative.extend(path[shared..].iter().cloned());
    Ok(relative.join("/"))
}

/// Lays a release's files out under `root` as they were beside the pipeline
/// file (whose folder is `root/<depth>`, deep enough for every `..`), and
/// returns where the pipeline file is. `fetch` gives an artifact's content.
pub fn lay_out(manifest: &Manifest, root: &Path, mut fetch: impl FnMut(&Artifact) -> Result<Vec<u8>>) -> Result<PathBuf> {
    let depth = manifest.artifacts.iter().map(|a| a.path.split('/').take_while(|p| *p == "..").count()).max().unwrap_or(0);
    let mut folder = root.to_path_buf();
    for level in 0..depth {
        folder.push(format!("up{level}"));
    }
    for artifact in &manifest.artifacts {
        let path = folder.join(&artifact.path);
        let content = fetch(artifact)?;
        if hex(&Sha256::digest(&content)) != artifact.sha256 {
            bail!("artifact {} does not match its SHA-256 {}", artifact.path, artifact.sha256);
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, content).with_context(|| format!("cannot write {}", path.display()))?;
    }
    std::fs::create_dir_all(&folder)?;
    let file = folder.join(&manifest.file_name);
    std::fs::write(&file, &manifest.text).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_pipeline_files_folder() {
        let base = Path::new("/repo/pipelines");
        assert_eq!(relative_to(base, Path::new("/repo/pipelines/schemas/v1/a.json")).unwrap(), "schemas/v1/a.json");
        assert_eq!(relative_to(base, Path::new("/repo/pipelines/../target/release/x.wasm")).unwrap(), "../target/release/x.wasm");
        assert_eq!(relative_to(Path::new("pipelines"), Path::new("pipelines/./a/../b.wasm")).unwrap(), "b.wasm");
        assert!(relative_to(Path::new("pipelines"), Path::new("/opt/x.wasm")).is_err());
    }

    #[test]
    fn a_release_is_laid_out_as_it_was_and_checked_against_its_hashes() {
        let root = tempfile::tempdir().unwrap();
        let wasm = b"\0asm".to_vec();
        let artifact = |path: &str, content: &[u8]| Artifact { path: path.into(), sha256: hex(&Sha256::digest(content)), bytes: content.len() as u64 };
        let manifest = Manifest {
            format: FORMAT,
            name: "ingest".into(),
            file_name: "ingest.toml".into(),
            origin: "/repo/pipelines".into(),
            text: "# the file".into(),
            artifacts: vec![artifact("../target/x.wasm", &wasm), artifact("schemas/a.json", b"{}")],
            versions: BTreeMap::new(),
            message: String::new(),
            user: String::new(),
            host: String::new(),
            time: String::new(),
        };
        let contents = |a: &Artifact| Ok(if a.path.ends_with(".wasm") { wasm.clone() } else { b"{}".to_vec() });
        let file = lay_out(&manifest, root.path(), contents).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "# the file");
        let folder = file.parent().unwrap();
        assert_eq!(std::fs::read(folder.join("../target/x.wasm")).unwrap(), wasm);
        assert_eq!(std::fs::read(folder.join("schemas/a.json")).unwrap(), b"{}");
        let tampered = lay_out(&manifest, root.path(), |_| Ok(b"other".to_vec()));
        assert!(format!("{:#}", tampered.unwrap_err()).contains("does not match its SHA-256"));
    }

    #[test]
    fn absolute_paths_of_a_deployed_file_are_read_from_where_the_release_laid_them_out() {
        let deployer = tempfile::tempdir().unwrap();
        let (folder, components, lists) = (deployer.path().join("pipelines"), deployer.path().join("components"), deployer.path().join("pipelines/lists"));
        std::fs::create_dir_all(&components).unwrap();
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(components.join("x.wasm"), b"\0asm as deployed").unwrap();
        std::fs::write(lists.join("words.txt"), b"as deployed").unwrap();
        let text = format!(
            "[[pipeline]]\nname = \"p\"\ninput = {{ subject = \"in.>\", mode = \"core\" }}\ndead_letter = \"dlq\"\n[[pipeline.stage]]\nname = \"s\"\ncomponent = {:?}\nfiles = {:?}\n",
            folder.join("../components/x.wasm").to_str().unwrap(),
            lists.to_str().unwrap()
        );
        let path = folder.join("p.toml");
        std::fs::write(&path, &text).unwrap();
        let file = crate::config::load(&path).unwrap();
        let carried = carried(&file).unwrap();
        let paths: Vec<&str> = carried.iter().map(|c| c.artifact.path.as_str()).collect();
        assert_eq!(paths, ["../components/x.wasm", "lists/words.txt"]);

        let manifest = Manifest {
            format: FORMAT,
            name: "p".into(),
            file_name: "p.toml".into(),
            origin: origin(&file).unwrap().to_string_lossy().into_owned(),
            text,
            artifacts: carried.iter().map(|c| c.artifact.clone()).collect(),
            versions: BTreeMap::new(),
            message: String::new(),
            user: String::new(),
            host: String::new(),
            time: String::new(),
        };
        let host = tempfile::tempdir().unwrap();
        let laid = lay_out(&manifest, host.path(), |a| Ok(carried.iter().find(|c| c.artifact.path == a.path).unwrap().content.clone())).unwrap();
        // The deployer's copies change after the deploy: the host reads the release's.
        std::fs::write(components.join("x.wasm"), b"\0asm changed since").unwrap();
        let moved = crate::config::load_moved(&laid, Some(Path::new(&manifest.origin))).unwrap();
        let stage = &moved.pipelines[0].stages[0];
        assert!(stage.component.starts_with(host.path()), "{}", stage.component.display());
        assert_eq!(std::fs::read(&stage.component).unwrap(), b"\0asm as deployed");
        assert_eq!(std::fs::read(stage.files.as_ref().unwrap().join("words.txt")).unwrap(), b"as deployed");
        // Unmoved, the same text names the deployer's files.
        assert!(crate::config::load(&laid).unwrap().pipelines[0].stages[0].component.starts_with(deployer.path()));
    }
}
