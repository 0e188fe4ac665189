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

    let scratch = workspace.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let with_secret = host(url, &[("ONLY_HERE", "yes"), ("TMPDIR", scratch.to_str().unwrap())]);
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
    // The files of revisions no longer run are removed; a stopping host removes the rest.
    let laid_out = || -> Vec<String> {
        let folders = std::fs::read_dir(&scratch).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir());
        folders.flat_map(|f| std::fs::read_dir(f).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap())).collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while laid_out() != ["revision-3"] {
        assert!(std::time::Instant::now() < deadline, "revisions left on disk: {:?}", laid_out());
        std::thread::sleep(Duration::from_millis(100));
    }
    late.terminate();
    with_secret.terminate();
    assert_eq!(laid_out(), Vec::<String>::new());
}

/// tag (stamping `version`) and route, from a durable consumer the hosts
/// share, JetStream in and out.
fn shared(workspace: &Workspace, version: u32) -> String {
    let pipeline = Pipeline::jetstream("ingest", "raw.>", "RAW")
        .set("output = { jetstream = true }")
        .set("workers = 1")
        .set("batch = { max_events = 64, max_wait = \"2ms\" }")
        .stage("tag", "tag", &format!("{{ set = {{ version = {version} }} }}"))
        .route("out.{event}");
    let file = PipelineFile::new().stream("RAW", &["raw.>"], "").stream("OUT", &["out.>"], "duplicate_window = \"5m\"").pipeline(pipeline);
    let path = workspace.path("ingest.toml");
    std::fs::write(&path, file.toml()).unwrap();
    path.to_str().unwrap().to_string()
}

/// The version header of every output in OUT, by event number.
async fn versions_by_event(nats: &Nats) -> std::collections::BTreeMap<u64, Vec<String>> {
    let mut by_event = std::collections::BTreeMap::<u64, Vec<String>>::new();
    for message in nats.stream_messages("OUT").await {
        by_event.entry(json(&message)["n"].as_u64().unwrap()).or_default().push(crate::support::header(&message, "Sluice-Pipeline-Version").unwrap());
    }
    by_event
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_on_one_consumer_take_up_a_deploy_under_load_and_a_rollback_losing_and_repeating_nothing() {
    const LOAD: usize = 20_000;
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let url = nats.url();
    let deploy = |version: u32, extra: &[&str]| {
        let file = shared(&workspace, version);
        let mut args = vec!["deploy", file.as_str(), "--name", "ingest", "--nats", url];
        args.extend_from_slice(extra);
        sluice(&args)
    };
    let (ok, log) = deploy(1, &[]);
    assert!(ok, "{log}");
    let hosts: Vec<Sluice> = (0..3).map(|_| Sluice::command(&["run", "--release", "ingest", "--nats", url, "--stats-interval", "1s"]).started(1)).collect();

    // Under continuous load, revision 2 lands and the deploy waits for all three.
    let load = crate::support::publish_steadily(&nats.jetstream, LOAD, Duration::from_millis(20));
    crate::support::wait_until(|| async { crate::support::stream_count(&nats, "OUT").await >= 3000 }).await;
    let (ok, log) = deploy(2, &["--wait", "--timeout", "30s"]);
    assert!(ok, "{log}");
    assert_eq!(log.matches(": runs it").count(), 3, "every host runs revision 2:\n{log}");
    load.await.unwrap();
    // Events published after the wait returned come out of revision 2 only.
    nats.publish_stored((LOAD..LOAD + 600).map(|n| (format!("raw.{n}"), event(n, serde_json::json!({}))))).await;

    // Rollback, then events of revision 1's version only.
    let (ok, log) = sluice(&["rollback", "ingest", "--nats", url]);
    assert!(ok, "{log}");
    let settled = |lines: &[&str]| lines.len() == 3 && lines.iter().all(|l| l.contains(" 3  running "));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, out) = sluice(&["status", "ingest", "--nats", url]);
        if settled(&out.lines().filter(|l| l.contains(" ingest ")).collect::<Vec<_>>()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the hosts never all ran revision 3:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    nats.publish_stored((LOAD + 600..LOAD + 1200).map(|n| (format!("raw.{n}"), event(n, serde_json::json!({}))))).await;

    let total = LOAD + 1200;
    crate::support::wait_until(|| async { crate::support::stream_count(&nats, "OUT").await >= total as u64 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_event = versions_by_event(&nats).await;
    assert_eq!(by_event.len(), total, "every event came out");
    assert!(by_event.values().all(|versions| versions.len() == 1), "no event came out twice");
    let version_of = |range: std::ops::Range<usize>| -> std::collections::BTreeSet<String> { range.map(|n| by_event[&(n as u64)][0].clone()).collect() };
    let (during, after_deploy, after_rollback) = (version_of(0..LOAD), version_of(LOAD..LOAD + 600), version_of(LOAD + 600..LOAD + 1200));
    assert_eq!(after_deploy.len(), 1, "{after_deploy:?}");
    assert_eq!(after_rollback.len(), 1, "{after_rollback:?}");
    assert_ne!(after_deploy, after_rollback);
    assert_eq!(during, after_deploy.union(&after_rollback).cloned().collect(), "the load came out of revision 1, then revision 2");
    let v2 = after_deploy.into_iter().next().unwrap();
    // The headers are the version ids `deploy` computed and the release keeps.
    let connection = sluice::nats::connect(url, "test").await.unwrap();
    let history = sluice::release::store::ReleaseStore::open(&connection).await.unwrap().history("ingest").await.unwrap();
    let kept: Vec<&str> = history.iter().map(|r| r.manifest.versions["ingest"].as_str()).collect();
    assert_eq!(kept, [after_rollback.first().unwrap().as_str(), v2.as_str(), after_rollback.first().unwrap().as_str()]);
    for host in hosts {
        let log = host.terminate();
        let swaps: Vec<String> =
            log.events("Swapping to the new version between batches.").iter().map(|e| e["to"].as_str().unwrap_or_default().to_string()).collect();
        assert_eq!(swaps.first(), Some(&v2), "each host swapped to revision 2 between batches, then back: {swaps:?}");
        assert_eq!(swaps.len(), 2, "{swaps:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_stopped_while_a_revision_lands_takes_it_up_once_it_runs_again() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let url = nats.url();
    let (ok, log) = sluice(&["deploy", &relay(&workspace, 1, None), "--name", "relay", "--nats", url]);
    assert!(ok, "{log}");
    let stopped = host(url, &[]);
    status_until(url, |lines| lines.len() == 1 && lines[0].contains(" 1  running "));

    let signal = |name: &str| assert!(std::process::Command::new("kill").args([name, &stopped.pid().to_string()]).status().unwrap().success());
    signal("-STOP");
    let (ok, log) = sluice(&["deploy", &relay(&workspace, 2, None), "--name", "relay", "--nats", url]);
    assert!(ok, "{log}");
    std::thread::sleep(Duration::from_secs(2));
    signal("-CONT");
    status_until(url, |lines| lines.len() == 1 && lines[0].contains(" 2  running "));
    let mut out = Collector::subscribe(&nats, "fleet.out.>").await;
    assert_eq!(relayed_version(&nats, &mut out, 0).await, 2);
    stopped.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_told_to_stop_while_it_starts_stops_cleanly_and_leaves_no_entry() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let url = nats.url();
    let (ok, log) = sluice(&["deploy", &relay(&workspace, 1, None), "--name", "relay", "--nats", url]);
    assert!(ok, "{log}");
    // Connected, still fetching and preparing the release when SIGTERM comes.
    let starting = Sluice::command(&["run", "--release", "relay", "--nats", url]).spawn();
    starting.wait_for("Connected to NATS.", 1, WAIT);
    let log = starting.terminate();
    assert!(log.contains("SIGTERM received."), "{log}");
    let (ok, out) = sluice(&["status", "relay", "--nats", url]);
    assert!(ok && !out.lines().any(|l| l.contains(" relay ")), "{out}");
}
