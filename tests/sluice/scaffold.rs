//! `sluice new plugin`: a project written in a folder outside the repository
//! passes its unit tests (`cargo test`, natively), builds with its own
//! `build.sh`, and passes the `sluice test` cases it came with, for a
//! transform and a sink in each of Rust, Python and JavaScript. Names it
//! cannot take, an SDK that is not there and a folder that exists are
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

/// The same for a Python and a JavaScript transform and sink: each project
/// carries its SDK layer and the WIT, and its `build.sh` its pinned tool
/// (taken from the repository's target/tools, where `cargo xtask` installed it).
#[test]
fn a_new_python_or_javascript_plugin_passes_its_unit_tests_builds_and_passes_its_cases_outside_the_repository() {
    let outside = tempfile::tempdir().unwrap();
    let tools = crate::support::root().join("target/tools");
    let (python, js) = (&["python3", "-m", "unittest"][..], &["node", "--test"][..]);
    for (name, lang, world, unit_tests, passed) in [
        ("hello-py", "python", "transform", python, "OK"),
        ("count-py", "python", "sink", python, "OK"),
        ("hello-js", "js", "transform", js, "# fail 0"),
        ("count-js", "js", "sink", js, "# fail 0"),
    ] {
        let dir = outside.path().to_str().unwrap();
        let (status, log) = Sluice::command(&["new", "plugin", name, "--lang", lang, "--world", world, "--dir", dir]).wait();
        assert!(status.success(), "{log}");
        let project = outside.path().join(name);
        let tests = passes(Command::new(unit_tests[0]).args(&unit_tests[1..]), &project);
        assert!(tests.contains(passed), "{tests}");
        passes(Command::new("./build.sh").env("SLUICE_TOOLS", &tools), &project);
        let component = project.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(component.is_file());
        let (status, log) = Sluice::command(&["test", project.join("pipeline.toml").to_str().unwrap()]).wait();
        assert!(status.success() && log.contains("2 passed, 0 failed"), "{log}");
        if world == "sink" {
            state_survives_a_hand_over(&component);
        }
    }
}

/// A sink's counts, kept by the SDK, go from one instance of the component
/// to the next, as in a hot swap or a restart.
fn state_survives_a_hand_over(component: &Path) {
    let toml = format!(
        "[[pipeline]]\nname = \"count\"\ninput = {{ subject = \"in.>\", mode = \"core\" }}\ndead_letter = \"dlq\"\nworkers = 1\n\
         [[pipeline.stage]]\nname = \"count\"\ncomponent = {:?}\n",
        component.to_str().unwrap()
    );
    let start = || sluice::pipeline::Chain::start(crate::chain::prepare(&toml).expect("version")).expect("chain");
    let on = |name: &str| sluice::plugin::Event { subject: "in.web".into(), headers: vec![], body: format!(r#"{{"event":"{name}"}}"#).into_bytes() };
    let mut old = start();
    old.process(&[on("a"), on("a"), on("b")]).expect("batch");
    old.commit().expect("the sink gives its state");
    let mut new = start();
    new.take_over(old.hand_over().expect("the sink gives its state")).expect("the state is taken over");
    new.process(&[on("b")]).expect("batch");
    let summary = new.tick(1_795_392_000_000_000_000).expect("tick");
    assert_eq!(summary.len(), 1, "{}: one summary", component.display());
    let body: serde_json::Value = serde_json::from_slice(&summary[0].body).unwrap();
    assert_eq!(body["counts"], serde_json::json!({ "a": 2, "b": 2 }), "{}", component.display());
}

#[test]
fn a_name_it_cannot_take_a_missing_sdk_and_an_existing_folder_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().to_str().unwrap();
    let refused = |args: &[&str], reason: &str| {
        let (status, log) = Sluice::command(args).wait();
        assert!(!status.success() && log.contains(reason), "{args:?}: expected {reason:?}:\n{log}");
    };
    refused(&["new", "plugin", "My Plugin", "--dir", dir], "\"My Plugin\" is not");
    refused(&["new", "plugin", "fine", "--sdk", dir, "--dir", dir], "the sluice-plugin SDK is not at");
    let (status, log) = Sluice::command(&["new", "plugin", "fine", "--dir", dir]).wait();
    assert!(status.success(), "{log}");
    refused(&["new", "plugin", "fine", "--dir", dir], "exists already");
}
