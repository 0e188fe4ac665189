//! `sluice new plugin NAME`: a plugin project of its own, outside this
//! repository, that builds with one command (`./build.sh`), has a unit test
//! that runs natively (`cargo test`), and a pipeline file with `sluice test`
//! cases that pass as written. A Rust project depends on the `sluice-plugin`
//! SDK by path; a Python or JavaScript one gets a copy of its language's SDK
//! layer and of the WIT, as this binary was built with them.

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
    check_name(name)?;
    let project = dir.join(name);
    if project.exists() {
        bail!("{} exists already; choose another name or --dir", project.display());
    }
    let crate_file = name.replace('-', "_");
    let sdk = match lang {
        Lang::Rust => {
            let sdk = std::path::absolute(sdk).context("cannot locate the SDK")?;
            if !sdk.join("Cargo.toml").is_file() {
                bail!("the sluice-plugin SDK is not at {} (give --sdk PATH to plugins/sdk of a sluice checkout)", sdk.display());
            }
            sdk.to_string_lossy().into_owned()
        }
        Lang::Python | Lang::Js => String::new(),
    };
    let world_name = match world {
        World::Transform => "transform",
        World::Sink => "sink",
    };
    let fill =
        |template: &str| template.replace("{{name}}", name).replace("{{crate_file}}", &crate_file).replace("{{sdk}}", &sdk).replace("{{world}}", world_name);
    let cases = match world {
        World::Transform => include_str!("transform.tests.toml"),
        World::Sink => include_str!("sink.tests.toml"),
    };
    let pipeline = match world {
        World::Transform => include_str!("transform.pipeline.toml"),
        World::Sink => include_str!("sink.pipeline.toml"),
    };
    let mut files = vec![("pipeline.toml", fill(pipeline)), ("pipeline.tests/cases.toml", fill(cases))];
    match lang {
        Lang::Rust => {
            let lib = if world == World::Transform { include_str!("transform.rs.txt") } else { include_str!("sink.rs.txt") };
            files.extend([
                ("Cargo.toml", fill(include_str!("Cargo.toml.txt"))),
                ("src/lib.rs", fill(lib)),
                ("build.sh", fill(include_str!("build.sh"))),
                ("README.md", fill(include_str!("README.md.txt"))),
                (".gitignore", "/target\n/*.wasm\n".to_string()),
            ]);
        }
        // The SDK and the WIT are copied in, as this binary has them, so the
        // project builds on its own.
        Lang::Python => files.extend([
            ("app.py", fill(if world == World::Transform { include_str!("transform.py.txt") } else { include_str!("sink.py.txt") })),
            ("test_app.py", fill(if world == World::Transform { include_str!("test_app.py.txt") } else { include_str!("test_sink.py.txt") })),
            ("build.sh", fill(include_str!("build.py.sh"))),
            ("README.md", fill(include_str!("README.py.md.txt"))),
            ("sluice_plugin/__init__.py", include_str!("../../../plugins/sdk/python/sluice_plugin/__init__.py").to_string()),
            ("sluice_plugin/testing.py", include_str!("../../../plugins/sdk/python/sluice_plugin/testing.py").to_string()),
            ("sluice_plugin/componentize.sh", include_str!("../../../plugins/sdk/python/componentize.sh").to_string()),
            ("wit/sluice.wit", include_str!("../../../wit/sluice.wit").to_string()),
            (".gitignore", "/*.wasm\n__pycache__/\n".to_string()),
        ]),
        Lang::Js => files.extend([
            ("app.js", fill(if world == World::Transform { include_str!("transform.js.txt") } else { include_str!("sink.js.txt") })),
            ("app.test.js", fill(if world == World::Transform { include_str!("test_app.js.txt") } else { include_str!("test_sink.js.txt") })),
            ("build.sh", fill(include_str!("build.js.sh"))),
            ("README.md", fill(include_str!("README.js.md.txt"))),
            ("package.json", fill(include_str!("package.json.txt"))),
            ("sluice/sluice-plugin.js", include_str!("../../../plugins/sdk/js/sluice-plugin.js").to_string()),
            ("sluice/sluice-testing.js", include_str!("../../../plugins/sdk/js/sluice-testing.js").to_string()),
            ("sluice/sluice-component.js", include_str!("../../../plugins/sdk/js/sluice-component.js").to_string()),
            ("sluice/componentize.sh", include_str!("../../../plugins/sdk/js/componentize.sh").to_string()),
            ("sluice/tools/package.json", include_str!("../../../plugins/sdk/js/tools/package.json").to_string()),
            ("sluice/tools/package-lock.json", include_str!("../../../plugins/sdk/js/tools/package-lock.json").to_string()),
            ("wit/sluice.wit", include_str!("../../../wit/sluice.wit").to_string()),
            (".gitignore", "/*.wasm\n/node_modules/\n".to_string()),
        ]),
    }
    for (path, text) in files {
        let path = project.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the project")).with_context(|| format!("cannot create {}", project.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    make_executable(&project.join("build.sh"))?;
    Ok(project)
}

/// How a project in `lang` runs its unit tests.
pub fn unit_test_command(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "cargo test",
        Lang::Python => "python3 -m unittest",
        Lang::Js => "node --test",
    }
}

impl Lang {
    pub fn title(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        }
    }
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
