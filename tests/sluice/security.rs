//! sluice against nats-servers that authenticate as real deployments do: a
//! token, a user and password, an NKey, a credentials file (operator, account
//! and user JWTs), and TLS with a throwaway CA and a client certificate. Each
//! works with its secret read from a variable or a file and never logged; a
//! wrong secret or an untrusted certificate stops `sluice run` with a clear
//! error; a URL carrying credentials is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use nkeys::KeyPair;
use serde_json::{Value, json};
use sluice::nats::ManagedServer;

use crate::support::{Pipeline, PipelineFile, Sluice, Workspace, event};

const WAIT: Duration = Duration::from_secs(30);

/// A file with a `[nats]` table, relaying `sec.in.>` to `sec.out.<event>`.
fn write_pipeline(workspace: &Workspace, nats: &str) -> PathBuf {
    let relay = Pipeline::core("relay", "sec.in.>").set("workers = 1").route("sec.out.{event}");
    workspace.write_pipeline(PipelineFile::new().nats(nats).pipeline(relay).toml())
}

fn write(workspace: &Workspace, name: &str, text: &str) -> String {
    std::fs::write(workspace.path(name), text).unwrap();
    workspace.path(name).to_str().unwrap().to_string()
}

/// `sluice run` on `file` relays an event, and its log holds none of `secrets`.
async fn relays(file: &Path, client: async_nats::Client, vars: &[(&str, &str)], secrets: &[&str]) {
    let sluice = Sluice::command(&["run", file.to_str().unwrap(), "--stats-interval", "1s"]).envs(vars).spawn();
    sluice.wait_for("Pipeline started.", 1, WAIT);
    let mut out = client.subscribe("sec.out.>").await.unwrap();
    client.flush().await.unwrap();
    client.publish("sec.in.1", event(1, json!({})).into()).await.unwrap();
    client.flush().await.unwrap();
    let message = tokio::time::timeout(WAIT, out.next()).await.expect("the event comes out").unwrap();
    assert_eq!(message.subject.as_str(), "sec.out.scene_generated");
    let log = sluice.terminate();
    for secret in secrets {
        assert!(!log.contains(secret), "the log shows a secret:\n{log}");
    }
}

/// `sluice run` on `file` stops at once, saying `reason`.
fn refuses(file: &Path, vars: &[(&str, &str)], reason: &str) {
    let (status, log) = Sluice::command(&["run", file.to_str().unwrap()]).envs(vars).wait();
    assert!(!status.success(), "{log}");
    assert!(log.to_string().to_lowercase().contains(&reason.to_lowercase()), "expected {reason:?}:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_a_variable() {
    let server = ManagedServer::start_with_config("authorization { token: \"t0ken-for-tests\" }\n").await.unwrap();
    let workspace = Workspace::new();
    let file = write_pipeline(&workspace, &format!("url = \"{}\"\ntoken = {{ env = \"NATS_TOKEN\" }}", server.url));
    let client = async_nats::ConnectOptions::with_token("t0ken-for-tests".into()).connect(&server.url).await.unwrap();
    relays(&file, client, &[("NATS_TOKEN", "t0ken-for-tests")], &["t0ken-for-tests"]).await;
    refuses(&file, &[("NATS_TOKEN", "wrong")], "authorization violation");
    refuses(&file, &[], "the NATS token is read from NATS_TOKEN, which is not set");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_and_a_password_from_a_file() {
    let server = ManagedServer::start_with_config("authorization { user: sluice, password: \"pa55-for-tests\" }\n").await.unwrap();
    let workspace = Workspace::new();
    write(&workspace, "password", "pa55-for-tests\n");
    let file = write_pipeline(&workspace, &format!("url = \"{}\"\nuser = \"sluice\"\npassword = {{ file = \"password\" }}", server.url));
    let client = async_nats::ConnectOptions::with_user_and_password("sluice".into(), "pa55-for-tests".into()).connect(&server.url).await.unwrap();
    relays(&file, client, &[], &["pa55-for-tests"]).await;
    write(&workspace, "password", "wrong\n");
    refuses(&file, &[], "authorization violation");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_nkey_seed_from_a_file() {
    let user = KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = ManagedServer::start_with_config(&format!("authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n", user.public_key())).await.unwrap();
    let workspace = Workspace::new();
    write(&workspace, "sluice.nk", &format!("{seed}\n"));
    let file = write_pipeline(&workspace, &format!("url = \"{}\"\nnkey = \"sluice.nk\"", server.url));
    let client = async_nats::ConnectOptions::with_nkey(seed.clone()).connect(&server.url).await.unwrap();
    relays(&file, client, &[], &[&seed]).await;
    write(&workspace, "sluice.nk", &format!("{}\n", KeyPair::new_user().seed().unwrap()));
    refuses(&file, &[], "authorization violation");
}

/// A JWT as the NATS tools write one: claims signed by `issuer`'s NKey.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({ "jti": format!("{name}-{iat}"), "iat": iat, "iss": issuer.public_key(), "name": name, "sub": subject, "nats": nats });
    let payload = encode(&serde_json::to_vec(&claims).unwrap());
    let signature = issuer.sign(format!("{header}.{payload}").as_bytes()).unwrap();
    format!("{header}.{payload}.{}", encode(&signature))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credentials_file_in_operator_mode() {
    let (operator, system, storyforge, user) = (KeyPair::new_operator(), KeyPair::new_account(), KeyPair::new_account(), KeyPair::new_user());
    let unlimited = json!({ "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1 });
    let operator_jwt =
        jwt(&operator, &operator.public_key(), "test-operator", json!({ "type": "operator", "version": 2, "system_account": system.public_key() }));
    let account_jwt = |keys: &KeyPair, name| jwt(&operator, &keys.public_key(), name, json!({ "type": "account", "version": 2, "limits": unlimited }));
    let user_jwt =
        jwt(&storyforge, &user.public_key(), "sluice", json!({ "type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1 }));
    let config = format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
        system.public_key(),
        system.public_key(),
        account_jwt(&system, "system"),
        storyforge.public_key(),
        account_jwt(&storyforge, "storyforge"),
    );
    let server = ManagedServer::start_with_config(&config).await.unwrap();
    let workspace = Workspace::new();
    let seed = user.seed().unwrap();
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    let creds_path = write(&workspace, "sluice.creds", &creds);
    let file = write_pipeline(&workspace, &format!("url = \"{}\"\ncreds = \"sluice.creds\"", server.url));
    let client = async_nats::ConnectOptions::with_credentials_file(creds_path).await.unwrap().connect(&server.url).await.unwrap();
    relays(&file, client, &[], &[&seed, &user_jwt]).await;
    // A user its account never signed.
    let stranger = KeyPair::new_user();
    let forged = jwt(&stranger, &stranger.public_key(), "stranger", json!({ "type": "user", "version": 2, "pub": {}, "sub": {} }));
    write(&workspace, "sluice.creds", &creds.replace(&user_jwt, &forged).replace(&seed, &stranger.seed().unwrap()));
    refuses(&file, &[], "authorization violation");
}

/// A CA, and certificates it signed for the server (127.0.0.1) and a client.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki(workspace: &Workspace, prefix: &str) -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{prefix} test CA"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let signed = |name: &str, alt: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(alt).unwrap().signed_by(&key, &ca).unwrap();
        (write(workspace, &format!("{prefix}-{name}.pem"), &cert.pem()), write(workspace, &format!("{prefix}-{name}-key.pem"), &key.serialize_pem()))
    };
    let server = signed("server", vec!["127.0.0.1".into(), "localhost".into()]);
    let client = signed("client", vec!["sluice.test".into()]);
    Pki { ca: write(workspace, &format!("{prefix}-ca.pem"), &ca.pem()), server, client }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let workspace = Workspace::new();
    let (trusted, other) = (pki(&workspace, "trusted"), pki(&workspace, "other"));
    let server = ManagedServer::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        trusted.server.0, trusted.server.1, trusted.ca
    ))
    .await
    .unwrap();
    let url = format!("tls://127.0.0.1:{}", server.port);
    let tls = |ca: &str, client: &(String, String)| format!("url = \"{url}\"\ntls = {{ ca = \"{ca}\", cert = \"{}\", key = \"{}\" }}", client.0, client.1);

    let file = write_pipeline(&workspace, &tls(&trusted.ca, &trusted.client));
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(trusted.ca.clone().into())
        .add_client_certificate(trusted.client.0.clone().into(), trusted.client.1.clone().into())
        .connect(&url)
        .await
        .unwrap();
    relays(&file, client, &[], &[]).await;

    // A server whose certificate no trusted CA signed.
    refuses(&write_pipeline(&workspace, &tls(&other.ca, &trusted.client)), &[], "invalid peer certificate");
    // A client certificate the server's CA did not sign.
    refuses(&write_pipeline(&workspace, &tls(&trusted.ca, &other.client)), &[], "cannot connect to NATS");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_carrying_credentials_is_refused_without_showing_them() {
    let workspace = Workspace::new();
    let file = write_pipeline(&workspace, "");
    let (status, log) = Sluice::command(&["run", file.to_str().unwrap(), "--nats", "nats://alice:hunter2@127.0.0.1:4222"]).wait();
    assert!(!status.success());
    assert!(log.contains("the NATS URL carries credentials before `@127.0.0.1:4222`, which the NATS client would ignore"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_commands_authenticate_with_flags_that_read_the_secret_from_a_file_or_a_variable() {
    let server = ManagedServer::start_with_config("authorization { user: sluice, password: \"pa55-for-tests\" }\n").await.unwrap();
    let workspace = Workspace::new();
    let password = write(&workspace, "password", "pa55-for-tests\n");
    let file = write_pipeline(&workspace, "");
    let file = file.to_str().unwrap();
    let url = server.url.as_str();
    let by_file = ["--nats", url, "--nats-user", "sluice", "--nats-password-file", &password];
    let by_variable = ["--nats", url, "--nats-user", "sluice", "--nats-password-env", "RELEASE_PASSWORD"];
    let with = |args: &[&str], auth: &[&str]| -> Vec<String> { args.iter().chain(auth).map(|a| a.to_string()).collect() };
    let sluice = |args: Vec<String>, vars: &[(&str, &str)]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, log) = Sluice::command(&args).envs(vars).wait();
        (status.success(), log.to_string())
    };

    let (ok, log) = sluice(with(&["deploy", file, "--name", "relay"], &by_file), &[]);
    assert!(ok && log.contains("release relay: revision 1"), "{log}");
    assert!(!log.contains("pa55-for-tests"), "the log shows the password:\n{log}");
    let host = Sluice::command(&with(&["run", "--release", "relay"], &by_variable).iter().map(String::as_str).collect::<Vec<_>>())
        .envs(&[("RELEASE_PASSWORD", "pa55-for-tests")])
        .started(1);
    let client = async_nats::ConnectOptions::with_user_and_password("sluice".into(), "pa55-for-tests".into()).connect(url).await.unwrap();
    let mut out = client.subscribe("sec.out.>").await.unwrap();
    client.flush().await.unwrap();
    client.publish("sec.in.1", event(1, json!({})).into()).await.unwrap();
    client.flush().await.unwrap();
    let message = tokio::time::timeout(WAIT, out.next()).await.expect("the release's pipeline relays the event").unwrap();
    assert_eq!(message.subject.as_str(), "sec.out.scene_generated");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (ok, log) = sluice(with(&["status", "relay"], &by_file), &[]);
        if ok && log.lines().any(|l| l.contains(" relay ") && l.contains(" 1  running ")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the host never showed in status:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, log) = sluice(with(&["releases", "relay"], &by_file), &[]);
    assert!(ok, "{log}");

    // Without credentials, or with a wrong one, every command stops and says so.
    for command in [vec!["deploy", file, "--name", "relay"], vec!["status", "relay"], vec!["releases", "relay"], vec!["rollback", "relay"]] {
        let (ok, log) = sluice(with(&command, &["--nats", url]), &[]);
        assert!(!ok && log.to_lowercase().contains("authorization violation"), "{command:?}:\n{log}");
    }
    let (ok, log) = sluice(with(&["run", "--release", "relay"], &by_variable), &[("RELEASE_PASSWORD", "wrong")]);
    assert!(!ok && log.to_lowercase().contains("authorization violation"), "{log}");
    assert!(!log.contains("wrong"), "the log shows the password:\n{log}");
    let (ok, log) = sluice(with(&["status", "relay"], &by_variable), &[]);
    assert!(!ok && log.contains("RELEASE_PASSWORD, which is not set"), "{log}");

    // Flags that contradict each other are refused before anything connects.
    let contradictions: [(&[&str], &str); 3] = [
        (&["--nats-user", "sluice"], "--nats-user needs --nats-password-env VARIABLE or --nats-password-file FILE"),
        (&["--nats-token-env", "T", "--nats-token-file", &password], "token from a variable or from a file, not both"),
        (&["--nats-token-env", "T", "--nats-user", "sluice", "--nats-password-env", "P"], "one way to authenticate"),
    ];
    for (flags, reason) in contradictions {
        let (ok, log) = sluice(with(&["status", "relay", "--nats", url], flags), &[]);
        assert!(!ok && log.contains(reason), "{flags:?}: expected {reason:?}:\n{log}");
    }
    host.terminate();
}
