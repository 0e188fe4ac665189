//! Releases over a real nats-server: `sluice deploy` checks a file as
//! `validate` does and publishes it with every file it uses, each file once
//! whatever the number of releases; a file that fails publishes nothing;
//! two deploys racing on one name cannot both land; `sluice releases` lists
//! the history and `sluice rollback` publishes an earlier revision again.

use sluice::nats::connect;
use sluice::release::store::{ARTIFACTS, ReleaseStore};

use crate::support::{Nats, Pipeline, PipelineFile, Sluice, Workspace};

/// tag then route; `version` goes into tag's config, so each is a new version.
fn file(workspace: &Workspace, version: u32) -> std::path::PathBuf {
    let ingest = Pipeline::core("ingest", "raw.>").stage("tag", "tag", &format!("{{ set = {{ version = {version} }} }}")).route("out.{event}");
    workspace.write_pipeline(PipelineFile::new().pipeline(ingest).toml())
}

fn sluice(args: &[&str]) -> (bool, String) {
    let (status, log) = Sluice::command(args).wait();
    (status.success(), log.to_string())
}

/// Messages in the object store's stream: chunks and their metadata.
async fn stored_objects(nats: &Nats) -> u64 {
    crate::support::stream_count(nats, &format!("OBJ_{ARTIFACTS}")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn deploys_land_in_order_carry_each_file_once_and_roll_back_as_new_revisions() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let path = file(&workspace, 1);
    let path = path.to_str().unwrap();

    let (ok, log) = sluice(&["deploy", path, "--name", "ingest", "--message", "first", "--nats", nats.url()]);
    assert!(ok && log.contains("release ingest: revision 1 (ingest "), "{log}");
    let objects = stored_objects(&nats).await;
    assert!(objects > 0);
    // The same files again: a new revision, nothing uploaded.
    let (ok, log) = sluice(&["deploy", path, "--name", "ingest", "--message", "same files", "--nats", nats.url()]);
    assert!(ok && log.contains("revision 2"), "{log}");
    assert_eq!(stored_objects(&nats).await, objects, "each file is stored once");

    // A file that does not validate publishes nothing.
    let broken =
        workspace.write_pipeline(PipelineFile::new().pipeline(Pipeline::core("ingest", "raw.>").stage("route", "route", "{ subjekt = \"x\" }")).toml());
    let (ok, log) = sluice(&["deploy", broken.to_str().unwrap(), "--name", "ingest", "--nats", nats.url()]);
    assert!(!ok && log.contains("nothing was published") && log.contains("subjekt"), "{log}");
    let connection = connect(nats.url(), "test").await.unwrap();
    let store = ReleaseStore::open(&connection).await.unwrap();
    assert_eq!(store.current("ingest").await.unwrap().unwrap().revision, 2, "no new revision");
    assert_eq!(stored_objects(&nats).await, objects, "no new object");

    // Version 2, then back to revision 1.
    file(&workspace, 2);
    let (ok, log) = sluice(&["deploy", path, "--name", "ingest", "--message", "version 2", "--nats", nats.url()]);
    assert!(ok && log.contains("revision 3"), "{log}");
    let (ok, log) = sluice(&["rollback", "ingest", "--to", "1", "--nats", nats.url()]);
    assert!(ok && log.contains("release ingest: revision 4 is revision 1 again"), "{log}");
    let history = store.history("ingest").await.unwrap();
    let revisions: Vec<(u64, &str)> = history.iter().map(|r| (r.revision, r.manifest.message.as_str())).collect();
    assert_eq!(revisions, [(1, "first"), (2, "same files"), (3, "version 2"), (4, "rollback to revision 1")]);
    assert_eq!(
        (&history[3].manifest.text, &history[3].manifest.artifacts, &history[3].manifest.versions),
        (&history[0].manifest.text, &history[0].manifest.artifacts, &history[0].manifest.versions)
    );
    assert_ne!(history[2].manifest.versions, history[0].manifest.versions, "version 2 has another version id");

    let (ok, log) = sluice(&["releases", "ingest", "--nats", nats.url()]);
    assert!(ok, "{log}");
    for message in ["first", "same files", "version 2", "rollback to revision 1"] {
        assert!(log.contains(message), "{log}");
    }
    let (ok, log) = sluice(&["rollback", "ingest", "--to", "9", "--nats", nats.url()]);
    assert!(!ok && log.contains("release `ingest` keeps no revision 9 (it keeps 1, 2, 3, 4)"), "{log}");
    let (ok, log) = sluice(&["releases", "nothing", "--nats", nats.url()]);
    assert!(!ok && log.contains("there is no release `nothing`"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_racing_deploys_one_lands_and_the_other_is_told_which_revision_it_lost_to() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let path = file(&workspace, 1);
    let (ok, log) = sluice(&["deploy", path.to_str().unwrap(), "--name", "ingest", "--nats", nats.url()]);
    assert!(ok, "{log}");
    let connection = connect(nats.url(), "test").await.unwrap();
    let store = ReleaseStore::open(&connection).await.unwrap();
    let mut manifest = store.current("ingest").await.unwrap().unwrap().manifest;

    // Both read revision 1; one lands revision 2; the other, still expecting 1, loses.
    manifest.message = "the winner".into();
    assert_eq!(store.publish(&manifest, Some(1)).await.unwrap().unwrap(), 2);
    manifest.message = "the loser".into();
    let lost = store.publish(&manifest, Some(1)).await.unwrap().expect_err("refused");
    assert_eq!(lost.current, 2);
    // The first deploy of a name loses to one that created it meanwhile.
    assert_eq!(store.publish(&manifest, None).await.unwrap().expect_err("refused").current, 2);
    assert_eq!(store.current("ingest").await.unwrap().unwrap().manifest.message, "the winner");
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_the_files_no_kept_revision_uses_and_spares_fresh_uploads() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    // Release `notes` carries a granted folder of its own; `ingest` shares only the component.
    let folder = workspace.path("notes");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("only-notes.txt"), "carried by the release `notes` alone").unwrap();
    let extra = format!("files = {:?}", folder.to_str().unwrap());
    let notes = Pipeline::core("notes", "raw.>").stage_at("tag", crate::support::plugin("tag").to_str().unwrap(), "{ set = { n = 1 } }", &extra);
    let written = workspace.write_pipeline(PipelineFile::new().pipeline(notes.route("out.{event}")).toml());
    let notes = workspace.path("notes.toml");
    std::fs::rename(written, &notes).unwrap();
    let (ok, log) = sluice(&["deploy", notes.to_str().unwrap(), "--name", "notes", "--nats", nats.url()]);
    assert!(ok, "{log}");
    for version in [1, 2] {
        let ingest = file(&workspace, version);
        let (ok, log) = sluice(&["deploy", ingest.to_str().unwrap(), "--name", "ingest", "--nats", nats.url()]);
        assert!(ok, "{log}");
    }

    let connection = connect(nats.url(), "test").await.unwrap();
    let store = ReleaseStore::open(&connection).await.unwrap();
    let carried = store.current("notes").await.unwrap().unwrap().manifest.artifacts;
    let only_notes = carried.iter().find(|a| a.path.ends_with("only-notes.txt")).expect("the granted file travels").clone();
    let ingest = store.history("ingest").await.unwrap();
    let used_by_ingest: std::collections::BTreeSet<_> = ingest.iter().flat_map(|r| r.manifest.artifacts.iter().map(|a| a.sha256.clone())).collect();
    assert!(!used_by_ingest.contains(&only_notes.sha256));
    let in_use = used_by_ingest.len() + carried.iter().filter(|a| !used_by_ingest.contains(&a.sha256)).count();

    // While `notes` keeps a revision, its file is in use.
    let (ok, log) = sluice(&["releases", "ingest", "--prune", "--grace", "0s", "--nats", nats.url()]);
    let expected = format!("pruned: 0 files (0 bytes) that no kept revision of the 2 releases uses; {in_use} in use");
    assert!(ok && log.contains(&expected), "{log}");

    // Once `notes` is gone, its file is unused: spared while fresh, then removed.
    connection.jetstream.get_key_value(sluice::release::store::MANIFESTS).await.unwrap().purge("notes").await.unwrap();
    let (ok, log) = sluice(&["releases", "ingest", "--prune", "--nats", nats.url()]);
    assert!(ok && log.contains("pruned: 0 files") && log.contains("1 unused but uploaded within 15m"), "{log}");
    assert!(store.holds(&only_notes.sha256).await);
    let (ok, log) = sluice(&["releases", "ingest", "--prune", "--grace", "0s", "--nats", nats.url()]);
    let removed = format!("pruned: 1 file ({} bytes) that no kept revision of the 1 release uses; {} in use", only_notes.bytes, used_by_ingest.len());
    assert!(ok && log.contains(&removed), "{log}");
    assert!(!store.holds(&only_notes.sha256).await, "the unused file is removed");
    for sha256 in &used_by_ingest {
        assert!(store.holds(sha256).await, "a file `ingest` uses stays");
    }
    // Deploying `notes` again uploads the removed file again.
    let (ok, log) = sluice(&["deploy", notes.to_str().unwrap(), "--name", "notes", "--nats", nats.url()]);
    assert!(ok, "{log}");
    assert!(store.holds(&only_notes.sha256).await, "a pruned file is uploaded again by the next deploy that uses it:\n{log}");
    // `ingest` still rolls back to its first revision, and a host runs it.
    let first = ingest[0].revision.to_string();
    let (ok, log) = sluice(&["rollback", "ingest", "--to", &first, "--nats", nats.url()]);
    assert!(ok, "{log}");
    let host = Sluice::command(&["run", "--release", "ingest", "--nats", nats.url()]).started(1);
    let log = host.terminate();
    assert!(log.contains(&ingest[0].manifest.versions["ingest"]), "the host runs the first revision's version:\n{log}");
}
