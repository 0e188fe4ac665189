//! `sluice new plugin`: a project written in a folder outside the repository
//! passes its unit tests (`cargo test`, natively), builds with its own
//! `build.sh`, and passes the `sluice test` cases it came with, for a
//! Rust transform and sink and for a Python and a JavaScript transform.
//! Names it cannot take and worlds it does not write in a language yet are
//! refused with the reason.

use std::path::Path;
use std::process::Command;

use crate::support::Sluice;

/// Runs `command` in `dir`, its output kept for the failure message.
fn passes(command: &mut Command, dir: &Path) -> String {
    let output = command.current_dir(dir).output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} in {} failed:\n{text}", dir.display());
    text
}

#[test]
fn a_new_plugin_project_passes_its_unit_tests_builds_and_passes_its_cases_outside_the_repository() {
    let outside = tempfile::tempdir().unwrap();
    // One target folder for both projects: their dependencies are built once.
    let target = outside.path().join("target");
    for (name, world, wasm) in [("shout", "transform", "shout.wasm"), ("count-names", "sink", "count_names.wasm")] {
        let dir = outside.path().to_str().unwrap();
        let (status, log) = Sluice::command(&["new", "plugin", name, "--world", world, "--dir", dir]).wait();
        assert!(status.success(), "{log}");
        let project = outside.path().join(name);
        let tests = passes(Command::new("cargo").args(["test", "--quiet"]).env("CARGO_TARGET_DIR", &target), &project);
        assert!(tests.contains("test result: ok."), "{tests}");
        passes(Command::new("./build.sh").env("CARGO_TARGET_DIR", &target), &project);
        assert!(project.join(wasm).is_file());
        let (status, log) = Sluice::command(&["test", project.join("pipeline.toml").to_str().unwrap()]).wait();
        assert!(status.success() && log.contains("2 passed, 0 failed"), "{log}");
    }
}

/// The same for a Python and a JavaScript transform: each project carries
/// its SDK layer and the WIT, and its `build.sh` its pinned tool (taken from
/// the repository's target/tools, where `cargo xtask` installed it).
#[test]
fn a_new_python_or_javascript_plugin_passes_its_unit_tests_builds_and_passes_its_cases_outside_the_repository() {
    let outside = tempfile::tempdir().unwrap();
    let tools = crate::support::root().join("target/tools");
    for (name, lang, unit_tests, passed) in
        [("hello-py", "python", &["python3", "-m", "unittest"][..], "OK"), ("hello-js", "js", &["node", "--test"][..], "# fail 0")]
    {
        let dir = outside.path().to_str().unwrap();
        let (status, log) = Sluice::command(&["new", "plugin", name, "--lang", lang, "--dir", dir]).wait();
        assert!(status.success(), "{log}");
        let project = outside.path().join(name);
        let tests = passes(Command::new(unit_tests[0]).args(&unit_tests[1..]), &project);
        assert!(tests.contains(passed), "{tests}");
        passes(Command::new("./build.sh").env("SLUICE_TOOLS", &tools), &project);
        assert!(project.join(format!("{}.wasm", name.replace('-', "_"))).is_file());
        let (status, log) = Sluice::command(&["test", project.join("pipeline.toml").to_str().unwrap()]).wait();
        assert!(status.success() && log.contains("2 passed, 0 failed"), "{log}");
    }
}

#[test]
fn a_name_it_cannot_take_a_language_it_does_not_write_and_an_existing_folder_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().to_str().unwrap();
    let refused = |args: &[&str], reason: &str| {
        let (status, log) = Sluice::command(args).wait();
        assert!(!status.success() && log.contains(reason), "{args:?}: expected {reason:?}:\n{log}");
    };
    refused(&["new", "plugin", "My Plugin", "--dir", dir], "\"My Plugin\" is not");
    refused(&["new", "plugin", "fine", "--lang", "python", "--world", "sink", "--dir", dir], "a sink in Python is not supported yet");
    refused(&["new", "plugin", "fine", "--sdk", dir, "--dir", dir], "the sluice-plugin SDK is not at");
    let (status, log) = Sluice::command(&["new", "plugin", "fine", "--dir", dir]).wait();
    assert!(status.success(), "{log}");
    refused(&["new", "plugin", "fine", "--dir", dir], "exists already");
}
