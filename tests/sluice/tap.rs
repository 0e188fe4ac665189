//! `sluice tap`: a running pipeline's outputs, inputs, dead letters and
//! what one stage passes on, as they pass, from another process over NATS, up to a limit; the dead
//! letters with a warning that they hold personal data; and a clear error
//! when no host runs the pipeline.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Nats, Pipeline, PipelineFile, Sluice, Workspace};

/// `sluice tap ARGS`: its exit status, the events it printed, and its stderr.
async fn tap(args: &[&str]) -> (bool, Vec<Value>, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).arg("tap").args(&args).output().expect("run sluice tap"))
            .await
            .unwrap();
    let events = serde_json::Deserializer::from_slice(&output.stdout).into_iter::<Value>().map(|v| v.expect("pretty JSON, one object an event")).collect();
    (output.status.success(), events, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn tap_shows_what_passes_a_running_pipeline_up_to_its_limit() {
    let nats = Nats::start().await;
    let workspace = Workspace::new();
    let web = Pipeline::core("web", "in.>")
        .set(r#"dead_letter = "dlq""#)
        .stage("tag", "tag", r#"{ require = ["event"], set = { tagged = true } }"#)
        .route("out.{event}");
    let sluice = Sluice::run(&workspace.write_pipeline(PipelineFile::new().pipeline(web).toml()), nats.url(), 1);
    let version = sluice.log().events("Pipeline started.")[0]["version"].as_str().unwrap().to_string();

    // Steady traffic while the taps run: every other event lacks `event`.
    let client = nats.client.clone();
    let traffic = tokio::spawn(async move {
        for n in 0..3000 {
            let body = if n % 2 == 0 { format!(r#"{{"event":"e{}","n":{n}}}"#, n % 3) } else { format!(r#"{{"n":{n}}}"#) };
            client.publish(format!("in.{n}"), body.into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let url = nats.url();
    let (ok, outputs, stderr) = tap(&["web", "--output", "--limit", "3", "--nats", url]).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains(" taps web"), "the host said it taps: {stderr}");
    assert_eq!(outputs.len(), 3, "{outputs:#?}");
    for event in &outputs {
        assert_eq!((event["pipeline"].as_str(), event["point"].as_str(), event["version"].as_str()), (Some("web"), Some("output"), Some(version.as_str())));
        assert!(event["subject"].as_str().unwrap().starts_with("out.e"), "{event}");
        assert_eq!(event["body"]["tagged"], true, "{event}");
        assert!(event["headers"].as_array().unwrap().iter().any(|h| h[0] == "Sluice-Pipeline-Version"), "{event}");
    }

    let (ok, inputs, stderr) = tap(&["web", "--input", "--limit", "2", "--nats", url]).await;
    assert!(ok && inputs.len() == 2, "{stderr}");
    assert!(inputs.iter().all(|e| e["point"] == "input" && e["body"].get("tagged").is_none() && e["subject"].as_str().unwrap().starts_with("in.")));

    let (ok, letters, stderr) = tap(&["web", "--dead-letters", "--limit", "2", "--nats", url]).await;
    assert!(ok && letters.len() == 2, "{stderr}");
    assert!(stderr.contains("personal data"), "dead letters come with a warning: {stderr}");
    assert!(letters.iter().all(|e| e["point"] == "dead_letters" && e["body"]["code"] == "missing_property"), "{letters:#?}");

    // What one stage passes on: `tag` has set `tagged` and not yet routed.
    let (ok, tagged, stderr) = tap(&["web", "--stage", "tag", "--limit", "2", "--nats", url]).await;
    assert!(ok && tagged.len() == 2, "{stderr}");
    for event in &tagged {
        assert_eq!(event["point"], serde_json::json!({ "stage": "tag" }), "{event}");
        assert!(event["body"]["tagged"] == true && event["subject"].as_str().unwrap().starts_with("in."), "tagged, not yet routed: {event}");
    }
    let (ok, _, stderr) = tap(&["web", "--stage", "nosuch", "--nats", url]).await;
    assert!(!ok && stderr.contains("has no stage `nosuch`; its stages: tag, route"), "{stderr}");

    traffic.abort();
    let (ok, _, stderr) = tap(&["nowhere", "--nats", url]).await;
    assert!(!ok && stderr.contains("no host answered on sluice.tap.nowhere"), "{stderr}");
    sluice.terminate();
}
