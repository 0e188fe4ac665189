//! `sluice new plugin NAME`: a plugin project of its own, outside this
//! repository, that builds with one command (`./build.sh`), has a unit test
//! that runs natively (`cargo test`), and a pipeline file with `sluice test`
//! cases that pass as written. Rust only so far: the project depends on the
//! `sluice-plugin` SDK by path.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Which world the plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum World {
    Transform,
    Sink,
}

/// The language it is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// Where the SDK is in the checkout this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
}

/// Writes the project `dir/name`; returns its folder.
pub fn new_plugin(name: &str, world: World, lang: Lang, dir: &Path, sdk: &Path) -> Result<PathBuf> {
    if lang != Lang::Rust {
        bail!("plugins in {lang:?} are not supported by `sluice new` yet; use --lang rust");
    }
    check_name(name)?;
    let sdk = std::path::absolute(sdk).context("cannot locate the SDK")?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!("the sluice-plugin SDK is not at {} (give --sdk PATH to plugins/sdk of a sluice checkout)", sdk.display());
    }
    let project = dir.join(name);
    if project.exists() {
        bail!("{} exists already; choose another name or --dir", project.display());
    }
    let crate_file = name.replace('-', "_");
    let (lib, cases) = match world {
        World::Transform => (include_str!("transform.rs.txt"), include_str!("transform.tests.toml")),
        World::Sink => (include_str!("sink.rs.txt"), include_str!("sink.tests.toml")),
    };
    let fill = |template: &str| template.replace("{{name}}", name).replace("{{crate_file}}", &crate_file).replace("{{sdk}}", &sdk.to_string_lossy());
    let pipeline = match world {
        World::Transform => include_str!("transform.pipeline.toml"),
        World::Sink => include_str!("sink.pipeline.toml"),
    };
    let files = [
        ("Cargo.toml".to_string(), fill(include_str!("Cargo.toml.txt"))),
        ("src/lib.rs".to_string(), fill(lib)),
        ("build.sh".to_string(), fill(include_str!("build.sh"))),
        ("pipeline.toml".to_string(), fill(pipeline)),
        (format!("pipeline.tests/{crate_file}.toml"), fill(cases)),
        ("README.md".to_string(), fill(include_str!("README.md.txt"))),
        (".gitignore".to_string(), "/target\n/*.wasm\n".to_string()),
    ];
    for (path, text) in files {
        let path = project.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the project")).with_context(|| format!("cannot create {}", project.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    make_executable(&project.join("build.sh"))?;
    Ok(project)
}

fn check_name(name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64;
    if !ok {
        bail!("a plugin's name is lower-case letters, digits, `-` and `_`, starting with a letter (at most 64): {name:?} is not");
    }
    Ok(())
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path)?.permissions();
    permissions.set_mode(0o755);
    std::fs::set_permissions(path, permissions).with_context(|| format!("cannot make {} executable", path.display()))
}
