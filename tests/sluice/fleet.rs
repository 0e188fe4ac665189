//! Hosts following a release (`sluice run --release`) over a real
//! nats-server: they start on its current revision, take up each new one
//! between batches, keep what they run when a revision cannot be prepared
//! on them and say why in `sluice status`; `deploy --wait` reports each
//! host; a rollback brings them back.

use std::time::Duration;

use crate::support::{Collector, Nats, Pipeline, PipelineFile, Sluice, Workspace, event, json, plugin};

const WAIT: Duration = Duration::from_secs(30);

/// A relay tagging each event with `version`; with `needs`, its tag stage is
/// granted that variable, which `validate` stands in for and a host may lack.
fn relay(workspace: &Workspace, version: u32, needs: Option<&str>) -> String {
    let grant = needs.map_or(String::new(), |name| format!("env = [{name:?}]"));
    let tag = plugin("tag");
    let pipeline = Pipeline::core("relay", "fleet.in.>")
        .set("workers = 1")
        .stage_at("tag", tag.to_str().unwrap(), &format!("{{ set = {{ version = {version} }} }}"), &grant)
        .route("fleet.out.{event}");
    let path = workspace.path("relay.toml");
    std::fs::write(&path, PipelineFile::new().pipeline(pipeline).toml()).unwrap();
    path.to_str().unwrap().to_string()
}

fn sluice(args: &[&str]) -> (bool, String) {
    let (status, log) = Sluice::command(args).wait();
    (status.success(), log.to_string())
}

/// A host following release `relay`, with `vars` in its environment.
fn host(url: &str, vars: &[(&str, &str)]) -> Sluice {
    Sluice::command(&["run", "--release", "relay", "--nats", url, "--stats-interval", "1s"]).envs(vars).started(1)
}

/// Polls `sluice status relay` until `done` holds for its lines.
fn status_until(url: &str, done: impl Fn(&[&str]) -> bool) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (ok, out) = sluice(&["status", "relay", "--nats", url]);
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(" relay ")).collect();
        if ok && done(&lines) {
            return out;
        }
        assert!(std::time::Instant::now() < deadline, "status never settled:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `version` of the next event relayed.
async fn relayed_version(nats: &Nats, out: &mut Collector, n: usize) -> u64 {
    nats.client.publish(format!("fleet.in.{n}"), event(n, serde_json::json!({})).into()).await.unwrap();
    nats.client.flush().await.unwrap();
    json(&out.take(1, WAIT).await[0])["version"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_follow_their_release_refuse_what_they_cannot_run_and_roll_back() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let url = nats.url();
    let (ok, log) = sluice(&["deploy", &relay(&workspace, 1, None), "--name", "relay", "--message", "v1", "--nats", url]);
    assert!(ok, "{log}");

    let with_secret = host(url, &[("ONLY_HERE", "yes")]);
    let without = host(url, &[]);
    let mut out = Collector::subscribe(&nats, "fleet.out.>").await;
    assert_eq!(relayed_version(&nats, &mut out, 0).await, 1);
    status_until(url, |lines| lines.len() == 2 && lines.iter().all(|l| l.contains(" 1  running ")));

    // Revision 2 needs a variable one host lacks: the other takes it up, this
    // one keeps revision 1 and says why; deploy --wait names it and fails.
    let (ok, log) =
        sluice(&["deploy", &relay(&workspace, 2, Some("ONLY_HERE")), "--name", "relay", "--message", "v2", "--nats", url, "--wait", "--timeout", "20s"]);
    assert!(!ok, "{log}");
    assert!(log.contains("runs it") && log.contains("refused:") && log.contains("ONLY_HERE"), "{log}");
    assert!(log.contains("revision 2 of release relay was refused by "), "{log}");
    let shown = status_until(url, |lines| {
        lines.iter().any(|l| l.contains(" 2  running ")) && lines.iter().any(|l| l.contains(" 1  refused ") && l.contains("revision 2:"))
    });
    assert!(shown.contains("ONLY_HERE"), "{shown}");
    without.terminate();
    assert_eq!(relayed_version(&nats, &mut out, 1).await, 2, "the host that took it up relays with revision 2");

    // A host started now comes up on the current revision.
    let late = host(url, &[("ONLY_HERE", "yes")]);
    status_until(url, |lines| lines.len() == 2 && lines.iter().all(|l| l.contains(" 2  running ")));

    // Rollback: revision 3 is revision 1, and every host swaps back.
    let (ok, log) = sluice(&["rollback", "relay", "--nats", url]);
    assert!(ok && log.contains("revision 3 is revision 1 again"), "{log}");
    status_until(url, |lines| lines.len() == 2 && lines.iter().all(|l| l.contains(" 3  running ")));
    for n in 2..6 {
        assert_eq!(relayed_version(&nats, &mut out, n).await, 1, "back on revision 1's tag");
    }
    late.terminate();
    with_secret.terminate();
}
