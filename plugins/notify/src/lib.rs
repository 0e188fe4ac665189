//! `notify`: turns the `alert` plugin's alerts into the messages on-call
//! tools take, for a pipeline that reads the alerts stream and delivers to
//! a webhook: a Slack incoming webhook (`format = "slack"`) or PagerDuty's
//! Events API v2 (`format = "pagerduty"`). `format` documents the config.

pub mod format;

use std::cell::RefCell;

use format::{Message, Notifier};

wit_bindgen::generate!({ world: "transform", path: "../../wit" });

use sluice::plugin::types::Rejection;

thread_local! {
    static NOTIFIER: RefCell<Option<Notifier>> = const { RefCell::new(None) };
}

struct Notify;

impl Guest for Notify {
    fn init(config: String) -> Result<(), String> {
        let notifier = Notifier::new(&config, |name| std::env::var(name).ok())?;
        NOTIFIER.with(|n| *n.borrow_mut() = Some(notifier));
        Ok(())
    }

    fn process(batch: Vec<Event>) -> Vec<Outcome> {
        NOTIFIER.with(|notifier| {
            let notifier = notifier.borrow();
            let notifier = notifier.as_ref().expect("the host calls init first");
            batch.into_iter().map(|event| outcome(notifier, event)).collect()
        })
    }
}

fn outcome(notifier: &Notifier, event: Event) -> Outcome {
    match notifier.message(&event.body) {
        Message::Send(body) => {
            let headers = vec![("Content-Type".into(), "application/json".into())];
            Outcome::Replace(vec![Event { subject: event.subject, headers, body }])
        }
        Message::Skip(reason) => Outcome::Drop(reason),
        Message::Invalid { property, message } => {
            Outcome::Reject(Rejection { code: "not_an_alert".into(), property: (!property.is_empty()).then_some(property), message })
        }
    }
}

export!(Notify);
