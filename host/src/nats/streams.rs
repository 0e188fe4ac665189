//! Creates or updates the JetStream streams a pipeline file declares, so that
//! retention (e.g. StoryForge's 12 months of raw events) is part of the
//! reviewed config rather than a manual step.

use anyhow::{Context, Result};
use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};

use super::Connection;
use crate::config::{Retention, Storage, StreamSpec};

pub async fn ensure(connection: &Connection, streams: &[StreamSpec]) -> Result<()> {
    for spec in streams {
        let info =
            connection.jetstream.create_or_update_stream(config(spec)).await.with_context(|| format!("cannot create or update stream `{}`", spec.name))?;
        tracing::info!(stream = %spec.name, subjects = ?spec.subjects, messages = info.state.messages, "Stream ready.");
    }
    Ok(())
}

fn config(spec: &StreamSpec) -> Config {
    Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        retention: match spec.retention {
            Retention::Limits => RetentionPolicy::Limits,
            Retention::Interest => RetentionPolicy::Interest,
            Retention::WorkQueue => RetentionPolicy::WorkQueue,
        },
        storage: match spec.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        max_age: spec.max_age.unwrap_or_default(),
        max_bytes: spec.max_bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        duplicate_window: spec.duplicate_window.unwrap_or_default(),
        num_replicas: spec.replicas,
        ..Default::default()
    }
}
