//! `sluice validate` on every `tests/config/*.toml`, compared with the `.err`
//! file beside it: the exact text a platform engineer sees. Run with
//! `SLUICE_BLESS=1` to write the `.err` files after a deliberate change.

use std::path::Path;

use crate::support::{Sluice, root};

#[test]
fn validate_reports_every_problem_with_its_line() {
    let dir = root().join("tests/config");
    let mut cases: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    cases.sort();
    assert!(cases.len() >= 8, "expected the config cases in {}", dir.display());
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let relative = case.strip_prefix(root()).unwrap();
        // At the default log level, as a platform engineer runs it.
        let (status, log) = Sluice::command(&["validate", relative.to_str().unwrap()]).env("SLUICE_LOG", "info,async_nats=warn").wait();
        let expected_path = case.with_extension("err");
        let actual = format!("exit: {}\n{log}\n", status.code().unwrap_or(-1));
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!("--- {}\n+++ actual\n{}", display(&expected_path), diff(&expected, &actual)));
        }
    }
    assert!(failures.is_empty(), "validate output differs (SLUICE_BLESS=1 to accept):\n{}", failures.join("\n"));
}

fn display(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// A line diff that is enough to see what changed.
fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => out.push_str(&format!("  {x}\n")),
            (x, y) => {
                if let Some(x) = x {
                    out.push_str(&format!("- {x}\n"));
                }
                if let Some(y) = y {
                    out.push_str(&format!("+ {y}\n"));
                }
            }
        }
    }
    out
}

#[test]
fn every_bundled_pipeline_validates() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.strip_prefix(root()).unwrap().to_str().unwrap().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    // As in a platform team's CI, without the secrets the files run with.
    let secrets = ["STORYFORGE_HASH_KEY", "PAGERDUTY_ROUTING_KEY", "PAGERDUTY_EVENTS_URL", "STORYFORGE_SLACK_WEBHOOK", "STORYFORGE_HEARTBEAT_URL"];
    let (status, log) = secrets.iter().fold(Sluice::command(&args), |command, name| command.without(name)).wait();
    assert!(status.success(), "{log}");
    for file in &files {
        assert!(log.contains(&format!("{file}: ok")), "{file} is not reported valid:\n{log}");
    }
    let unset = |file: &str| {
        log.plain().find_map(|line| line.strip_prefix(&format!("{file}: not set here, checked with stand-in values; `sluice run` needs them: "))).unwrap_or("")
    };
    assert_eq!(unset("pipelines/storyforge.toml"), "STORYFORGE_HASH_KEY", "{log}");
    assert_eq!(
        unset("pipelines/storyforge-pager.toml"),
        "PAGERDUTY_ROUTING_KEY, PAGERDUTY_EVENTS_URL, STORYFORGE_SLACK_WEBHOOK, STORYFORGE_HEARTBEAT_URL",
        "{log}"
    );
    assert_eq!(unset("pipelines/demo.toml"), "", "{log}");
}

#[test]
fn compiled_components_are_kept_on_disk_checked_and_compiled_again_when_damaged() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("compiled");
    let validate = || {
        let (status, log) = Sluice::command(&["validate", "pipelines/storyforge.toml"]).env("SLUICE_CACHE_DIR", dir.to_str().unwrap()).wait();
        assert!(status.success(), "{log}");
        (log.events("Component compiled.").len(), log.events("Compiled component read from the cache.").len(), log)
    };
    let (compiled, read, log) = validate();
    assert!(compiled >= 4 && read == 0, "{log}");
    let files = || -> Vec<std::path::PathBuf> { std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect() };
    assert_eq!(files().len(), compiled, "one file per component");
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "the folder is this user's alone");

    let (again, read, log) = validate();
    assert_eq!((again, read), (0, compiled), "{log}");

    // A damaged file is not used: it is compiled again and replaced.
    let damaged = &files()[0];
    let bytes = std::fs::read(damaged).unwrap();
    std::fs::write(damaged, &bytes[..bytes.len() / 2]).unwrap();
    let (recompiled, read, log) = validate();
    assert_eq!((recompiled, read), (1, compiled - 1), "{log}");
    assert_eq!(log.events("A compiled component in the cache cannot be used; compiling it again.").len(), 1, "{log}");
    assert_eq!(std::fs::read(damaged).unwrap(), bytes, "the same code is kept again");

    // A folder others may write is not read from.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (compiled_again, read, log) = validate();
    assert_eq!((compiled_again, read), (compiled, 0), "{log}");
    assert!(log.contains("The compiled-code cache folder is not this user's alone; not using it."), "{log}");
}
