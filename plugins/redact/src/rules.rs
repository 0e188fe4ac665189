//! The redaction rules, independent of the plugin boundary so they can be
//! unit-tested on the host.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use sluice_plugin::canonical;
use sluice_plugin::json::{self, Edit, Properties};

use crate::text;

/// Which properties hold what kind of personal data. The defaults are
/// StoryForge's (spec sections 4 and 8).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Properties holding a client IP address.
    #[serde(default = "default_ip")]
    pub ip: Vec<String>,
    /// Properties replaced by `<name>_hash` on every event.
    #[serde(default = "default_hashed")]
    pub hashed: Vec<String>,
    /// Properties replaced by `<name>_hash` on the named events only.
    #[serde(default = "default_hashed_by_event")]
    pub hashed_by_event: BTreeMap<String, Vec<String>>,
    /// Properties of free text, masked.
    #[serde(default = "default_free_text")]
    pub free_text: Vec<String>,
    /// Properties removed from the events of users who opted out, besides the
    /// IP and free-text ones.
    #[serde(default = "default_identifying")]
    pub identifying: Vec<String>,
    /// The property that says a user opted out.
    #[serde(default = "default_opt_out")]
    pub opt_out: String,
}

impl Default for Rules {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every rule has a default")
    }
}

fn default_ip() -> Vec<String> {
    vec!["ip".into()]
}
fn default_hashed() -> Vec<String> {
    vec!["prompt".into()]
}
fn default_hashed_by_event() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([("scene_prompt_submitted".into(), vec!["parameters".into()])])
}
fn default_free_text() -> Vec<String> {
    vec!["comment".into()]
}
fn default_identifying() -> Vec<String> {
    vec!["user_id".into(), "session_id".into()]
}
fn default_opt_out() -> String {
    "analytics_opt_out".into()
}

pub struct Redactor {
    rules: Rules,
    key: Vec<u8>,
}

impl Redactor {
    pub fn new(rules: Rules, key: Vec<u8>) -> Self {
        Self { rules, key }
    }

    /// The redacted body, or `None` when there was nothing to redact. Only
    /// the properties redacted are rewritten; the rest is copied as it came.
    pub fn redact(&self, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let properties = Properties::parse(body)?;
        // Most events carry none of the properties redaction looks at.
        if !properties.names().any(|name| self.concerns(name)) {
            return Ok(None);
        }
        let mut event = properties.edit();
        Ok(self.apply(&properties, &mut event).then(|| event.to_vec()))
    }

    /// Redacts `event` (an edit of `properties`); says whether anything changed.
    fn apply(&self, properties: &Properties, event: &mut Edit) -> bool {
        let mut changed = false;
        if properties.get(&self.rules.opt_out).is_some_and(|raw| raw.get() == "true") {
            for name in self.rules.identifying.iter().chain(&self.rules.ip).chain(&self.rules.free_text) {
                changed |= event.remove(name);
            }
        }
        for name in &self.rules.ip {
            let Some(text) = event.get(name) else { continue };
            match json::string(text).and_then(|s| s.parse::<IpAddr>().ok()) {
                Some(ip) => {
                    let truncated = truncate(ip).to_string();
                    if json::string(text).as_deref() != Some(truncated.as_str()) {
                        event.set(name, &truncated);
                        changed = true;
                    }
                }
                None => changed |= event.remove(name),
            }
        }
        let name = properties.str("event").unwrap_or_default();
        let by_event = self.rules.hashed_by_event.get(name.as_ref()).into_iter().flatten();
        for property in self.rules.hashed.iter().chain(by_event) {
            let Some(value) = event.get(property).and_then(|text| serde_json::from_str::<Value>(text).ok()) else { continue };
            event.remove(property);
            event.set(&format!("{property}_hash"), &self.hash(&value));
            changed = true;
        }
        for name in &self.rules.free_text {
            let Some(text) = event.get(name).and_then(json::string) else { continue };
            let masked = text::mask(&text);
            if masked != text {
                event.set(name, &masked);
                changed = true;
            }
        }
        changed
    }

    /// Whether a top-level property may need redacting.
    fn concerns(&self, name: &str) -> bool {
        let rules = &self.rules;
        name == rules.opt_out
            || [&rules.ip, &rules.hashed, &rules.free_text].iter().any(|list| list.iter().any(|n| n == name))
            || rules.hashed_by_event.values().flatten().any(|n| n == name)
    }

    /// Hex HMAC-SHA256 of the value's canonical JSON.
    pub fn hash(&self, value: &Value) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(&canonical::to_vec(value));
        sluice_plugin::hex(&mac.finalize().into_bytes())
    }
}

/// IPv4: the first three octets; IPv6: the first 48 bits.
fn truncate(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redact(value: Value) -> Value {
        let redactor = Redactor::new(Rules::default(), b"0123456789abcdef-test".to_vec());
        match redactor.redact(&serde_json::to_vec(&value).unwrap()).unwrap() {
            Some(body) => serde_json::from_slice(&body).unwrap(),
            None => value,
        }
    }

    #[test]
    fn ips_are_truncated() {
        assert_eq!(redact(json!({ "ip": "203.0.113.42" }))["ip"], "203.0.113.0");
        assert_eq!(redact(json!({ "ip": "2001:db8:85a3:8d3:1319:8a2e:370:7348" }))["ip"], "2001:db8:85a3::");
        assert!(redact(json!({ "ip": "not an ip" })).get("ip").is_none());
    }

    #[test]
    fn prompts_are_hashed_canonically() {
        let a = redact(json!({ "event": "scene_prompt_submitted", "parameters": { "b": 1, "a": [ "x" ] }, "prompt": "a castle" }));
        let b = redact(json!({ "event": "scene_prompt_submitted", "parameters": { "a": [ "x" ], "b": 1 }, "prompt": "a castle" }));
        assert_eq!(a["parameters_hash"], b["parameters_hash"]);
        assert_eq!(a["parameters_hash"].as_str().unwrap().len(), 64);
        assert!(a.get("parameters").is_none() && a.get("prompt").is_none());
        assert_ne!(a["prompt_hash"], a["parameters_hash"]);
        // Other events keep a property named `parameters`.
        assert_eq!(redact(json!({ "event": "other", "parameters": 1 }))["parameters"], 1);
    }

    #[test]
    fn opt_out_removes_identity() {
        let out = redact(
            json!({ "event": "feedback_submitted", "analytics_opt_out": true, "user_id": "u", "session_id": "s", "ip": "1.2.3.4", "comment": "hi", "rating": 5 }),
        );
        assert_eq!(out, json!({ "event": "feedback_submitted", "analytics_opt_out": true, "rating": 5 }));
    }

    #[test]
    fn nothing_to_redact_is_not_reserialised() {
        let redactor = Redactor::new(Rules::default(), b"0123456789abcdef-test".to_vec());
        assert_eq!(redactor.redact(br#"{"event":"scene_locked","ip":"10.0.0.0"}"#).unwrap(), None);
    }
}
