//! `notify`: turns the `alert` plugin's alerts into the messages on-call
//! tools take, for a pipeline that reads the alerts stream and delivers to
//! a webhook: a Slack incoming webhook (`format = "slack"`) or PagerDuty's
//! Events API v2 (`format = "pagerduty"`). `format` documents the config.

pub mod format;

use format::{Message, Notifier};
use sluice_plugin::{ConfigError, Event, Outcome, Transform};

struct Notify(Notifier);

impl Transform for Notify {
    const NAME: &'static str = "notify";
    /// `Notifier` reads the config itself (and names the format it is for).
    type Config = serde_json::Value;

    fn new(config: serde_json::Value) -> Result<Self, ConfigError> {
        Notifier::new(&config.to_string(), |name| std::env::var(name).ok()).map(Notify)
    }

    fn process(&mut self, event: Event) -> Outcome {
        outcome(&self.0, event)
    }
}

sluice_plugin::transform!(Notify);

fn outcome(notifier: &Notifier, event: Event) -> Outcome {
    match notifier.message(&event.body) {
        Message::Send(body) => {
            let headers = vec![("Content-Type".into(), "application/json".into())];
            Outcome::Replace(vec![Event { subject: event.subject, headers, body }])
        }
        Message::Skip(reason) => Outcome::Drop(reason),
        Message::Invalid { property, message } => Outcome::reject("not_an_alert", Some(property.as_str()).filter(|p| !p.is_empty()), message),
    }
}
