//! The activation shares (spec section 2): of the users who signed up in a
//! window, how many reached each milestone (their first `scene_locked`
//! within 24 h, their first `export_succeeded` within 48 h) in time.
//!
//! Each user is followed from their sign-up until the longest `within` has
//! passed (by event time, past the late allowance); then they leave the
//! state. A user who reached every milestone stays until then too, so that a
//! sign-up sent again in that time is still the same user, not a new one. A user is 16 bytes of key (the
//! first half of the SHA-256 of their id, so ids of any length cost the
//! same), their sign-up time, their profile (the cohort groups they count
//! in, interned: users who share a source, goal and experiments share one)
//! and a bit per milestone: about 40 bytes in the map and 16 in the queue
//! that expires them in sign-up order.
//!
//! Past that, the activation still remembers each user's profile, for the
//! cohort values (`goal`, …) of their later events, which lack them: 8 bytes
//! of key, the profile and the hour of their last event, until `remember_for`
//! has passed since it (16 bytes a user in the snapshot, about 30 in the
//! map), for at most `max_remembered` users.
//!
//! Users are counted by the window they signed up in. A milestone's share
//! for that window is published once every user in it is decided: `within`
//! after the window's end, past the late allowance. A user who never
//! reaches it counts in the denominator then.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sluice_plugin::labels::{self, Labels};
use sluice_plugin::time;
use sluice_plugin::windows::step_start;

use crate::config::{self, Settings};
use crate::engine::{self, ALL, Output, Tally, other_labels as other};

/// Most distinct profiles kept; past it, unused ones are dropped, and if
/// all are in use a new user counts in the `(other)` profile.
const MAX_PROFILES: usize = 10_000;

/// A user being followed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct User {
    signed_up_ms: i64,
    profile: u32,
    /// A bit per milestone reached, in the order of `State::milestones`.
    reached: u8,
}

/// A user whose cohort values are remembered for their later events.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Remembered {
    profile: u32,
    /// The hour (since the Unix epoch, by event time) of their last event.
    seen_hour: u32,
}

const HOUR_MS: i64 = 3_600_000;

/// The cohort groups a user counts in, and their sign-up's values of the
/// cohort fields (for rollups of their later events, which lack them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Profile {
    traits: Labels,
    groups: Vec<(String, Labels)>,
}

/// The sign-ups of one window, per group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CohortWindow {
    width_ms: i64,
    start_ms: i64,
    /// Milestones whose share was published.
    published: BTreeSet<String>,
    groups: BTreeMap<String, CohortGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CohortGroup {
    cut: String,
    labels: Labels,
    users: u64,
    /// Users who reached each milestone in time, by its name.
    reached: BTreeMap<String, u64>,
}

/// What the activation keeps in the stage's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The milestones the users' bits stand for, in order.
    milestones: Vec<String>,
    #[serde(with = "packed")]
    users: HashMap<u128, User>,
    profiles: Vec<Profile>,
    windows: Vec<CohortWindow>,
    /// Sign-ups not followed because `max_users` were.
    untracked: u64,
    /// Users whose profile is remembered for their later events, by the
    /// first 8 bytes of their key.
    #[serde(with = "packed::remembered", default)]
    remembered: HashMap<u64, Remembered>,
    /// Event time through which users not seen for `remember_for` were let go.
    #[serde(default)]
    swept_ms: i64,
    #[serde(skip)]
    profile_ids: HashMap<Profile, u32>,
    /// Users by sign-up (as they came, so in order within the allowance).
    #[serde(skip)]
    expiry: VecDeque<u128>,
}

impl State {
    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn remembered(&self) -> usize {
        self.remembered.len()
    }
}

pub struct Activation {
    config: config::Activation,
}

impl Activation {
    pub fn new(config: config::Activation) -> Self {
        Self { config }
    }

    /// Whether events of this name concern the activation.
    pub fn follows(&self, name: &str) -> bool {
        name == self.config.signed_up || self.config.milestones.iter().any(|m| m.event == name)
    }

    /// A kept state made to fit this config: the users' bits follow the
    /// milestones by name, windows of lengths no longer wanted go, and the
    /// indexes the snapshot leaves out are built again.
    pub fn adopt(&self, state: &mut State) {
        let names: Vec<String> = self.config.milestones.iter().map(|m| m.name.clone()).collect();
        if state.milestones != names {
            let moved: Vec<Option<usize>> = state.milestones.iter().map(|old| names.iter().position(|new| new == old)).collect();
            for user in state.users.values_mut() {
                let mut reached = 0u8;
                for (bit, to) in moved.iter().enumerate() {
                    if let Some(to) = to
                        && user.reached & (1 << bit) != 0
                    {
                        reached |= 1 << to;
                    }
                }
                user.reached = reached;
            }
            state.milestones = names;
        }
        let widths: Vec<i64> = self.config.widths.iter().map(|w| w.ms).collect();
        state.windows.retain(|w| widths.contains(&w.width_ms));
        state.profile_ids = state.profiles.iter().enumerate().map(|(n, p)| (p.clone(), n as u32)).collect();
        let mut order: Vec<(i64, u128)> = state.users.iter().map(|(key, user)| (user.signed_up_ms, *key)).collect();
        order.sort_unstable();
        state.expiry = order.into_iter().map(|(_, key)| key).collect();
    }

    /// Counts a sign-up or a milestone event at event time `at_ms`.
    pub fn count(&self, state: &mut State, name: &str, event: &Map<String, Value>, at_ms: i64, settings: &Settings, tally: &mut Tally) {
        if state.milestones.is_empty() {
            state.milestones = self.config.milestones.iter().map(|m| m.name.clone()).collect();
        }
        let Some(key) = user_key(event, settings) else {
            tally.missing_value += 1;
            return;
        };
        if name == self.config.signed_up {
            self.sign_up(state, key, event, at_ms, settings, tally);
            return;
        }
        let Some(user) = state.users.get_mut(&key) else { return };
        let signed_up_ms = user.signed_up_ms;
        let mut reached = Vec::new();
        for (bit, milestone) in self.config.milestones.iter().enumerate() {
            let in_time = at_ms >= signed_up_ms && at_ms - signed_up_ms <= milestone.within_ms;
            if milestone.event == name && in_time && user.reached & (1 << bit) == 0 {
                user.reached |= 1 << bit;
                reached.push(milestone.name.as_str());
            }
        }
        let profile = user.profile;
        for width in &self.config.widths {
            let start_ms = step_start(signed_up_ms, width.ms);
            let Some(window) = state.windows.iter_mut().find(|w| w.width_ms == width.ms && w.start_ms == start_ms) else { continue };
            for (cut, labels) in &state.profiles[profile as usize].groups {
                let key = labels::series_key(cut, labels);
                // Absent only if the group went to (other) at sign-up.
                let group = match window.groups.get_mut(&key) {
                    Some(group) => group,
                    None => match window.groups.get_mut(&labels::series_key(cut, &other(labels))) {
                        Some(group) => group,
                        None => continue,
                    },
                };
                for milestone in &reached {
                    *group.reached.entry(milestone.to_string()).or_default() += 1;
                }
            }
        }
    }

    fn sign_up(&self, state: &mut State, key: u128, event: &Map<String, Value>, at_ms: i64, settings: &Settings, tally: &mut Tally) {
        if state.users.contains_key(&key) {
            // A sign-up sent twice is one user.
            return;
        }
        if state.users.len() >= self.config.max_users {
            state.untracked += 1;
            tally.untracked_users += 1;
            return;
        }
        let profile = self.profile(event, settings);
        let profile_id = intern(state, profile);
        self.remember(state, key, profile_id, at_ms, tally);
        state.users.insert(key, User { signed_up_ms: at_ms, profile: profile_id, reached: 0 });
        state.expiry.push_back(key);
        for width in &self.config.widths {
            let start_ms = step_start(at_ms, width.ms);
            let at = match state.windows.iter().position(|w| w.width_ms == width.ms && w.start_ms == start_ms) {
                Some(at) => at,
                None => {
                    state.windows.push(CohortWindow { width_ms: width.ms, start_ms, published: BTreeSet::new(), groups: BTreeMap::new() });
                    state.windows.len() - 1
                }
            };
            let window = &mut state.windows[at];
            for (cut, labels) in &state.profiles[profile_id as usize].groups {
                let mut key = labels::series_key(cut, labels);
                let mut labels = labels.clone();
                if !window.groups.contains_key(&key) && window.groups.len() >= settings.max_groups {
                    tally.over_group_limit += 1;
                    labels = other(&labels);
                    key = labels::series_key(cut, &labels);
                }
                let group = window.groups.entry(key).or_insert_with(|| CohortGroup { cut: cut.clone(), labels, users: 0, reached: BTreeMap::new() });
                group.users += 1;
            }
        }
    }

    /// The groups a user counts in, from their sign-up event.
    fn profile(&self, event: &Map<String, Value>, settings: &Settings) -> Profile {
        let base = engine::by_labels(&self.config.by, event);
        let mut traits = Labels::new();
        let mut groups = vec![(ALL.to_string(), base.clone())];
        for cohort in &settings.cohorts {
            if let Some(value) = event.get(cohort).and_then(engine::label) {
                traits.insert(cohort.clone(), value);
            }
            groups.extend(engine::cut(&base, cohort, event.get(cohort)).into_iter().map(|labels| (cohort.clone(), labels)));
        }
        Profile { traits, groups }
    }

    /// Keeps a signing-up user's profile for their later events.
    fn remember(&self, state: &mut State, key: u128, profile: u32, at_ms: i64, tally: &mut Tally) {
        let short = short_key(key);
        if !state.remembered.contains_key(&short) && state.remembered.len() >= self.config.max_remembered {
            tally.unremembered_users += 1;
            return;
        }
        state.remembered.insert(short, Remembered { profile, seen_hour: hour_of(at_ms) });
    }

    /// The sign-up's cohort values of the user of `event` (at event time
    /// `at_ms`), if they are remembered; they are kept another
    /// `remember_for` from now.
    pub fn recall(&self, state: &mut State, event: &Map<String, Value>, at_ms: i64, settings: &Settings) -> Option<Labels> {
        let key = user_key(event, settings)?;
        let profile = match state.remembered.get_mut(&short_key(key)) {
            Some(user) => {
                user.seen_hour = user.seen_hour.max(hour_of(at_ms));
                user.profile
            }
            // Followed but not remembered: `max_remembered` were.
            None => state.users.get(&key)?.profile,
        };
        state.profiles.get(profile as usize).map(|profile| profile.traits.clone())
    }

    /// Event time is decided through `decided_ms` (no event before it can
    /// still come): publishes each share whose users are all decided, and
    /// lets go of users past their longest milestone.
    pub fn advance(&self, state: &mut State, decided_ms: i64, settings: &Settings) -> Vec<Output> {
        let mut outputs = Vec::new();
        let mut order: Vec<usize> = (0..state.windows.len()).collect();
        order.sort_by_key(|&n| (state.windows[n].width_ms, state.windows[n].start_ms));
        for n in order {
            let window = &mut state.windows[n];
            let Some(width) = self.config.widths.iter().find(|w| w.ms == window.width_ms) else { continue };
            for milestone in &self.config.milestones {
                if window.published.contains(&milestone.name) || window.start_ms + width.ms + milestone.within_ms > decided_ms {
                    continue;
                }
                window.published.insert(milestone.name.clone());
                outputs.push(self.share(window, width, milestone, state.untracked, settings));
            }
        }
        let all = self.config.milestones.len();
        state.windows.retain(|w| w.published.len() < all);
        // Users unseen for `remember_for` are let go, looked for once an hour of event time.
        if decided_ms.saturating_sub(state.swept_ms) >= HOUR_MS {
            let remember_ms = self.config.remember_ms;
            state.remembered.retain(|_, user| (i64::from(user.seen_hour) + 1) * HOUR_MS + remember_ms >= decided_ms);
            state.swept_ms = decided_ms;
        }
        let longest = self.config.longest_ms();
        while let Some(key) = state.expiry.front().copied() {
            match state.users.get(&key) {
                Some(user) if user.signed_up_ms.saturating_add(longest) >= decided_ms => break,
                _ => {
                    state.users.remove(&key);
                }
            }
            state.expiry.pop_front();
        }
        outputs
    }

    fn share(&self, window: &CohortWindow, width: &config::Width, milestone: &config::Milestone, untracked: u64, settings: &Settings) -> Output {
        let users: u64 = window.groups.values().filter(|g| g.cut == ALL).map(|g| g.users).sum();
        let rows: Vec<Value> = window
            .groups
            .values()
            .map(|group| {
                let reached = group.reached.get(&milestone.name).copied().unwrap_or(0);
                let share = (group.users > 0).then(|| (reached as f64 / group.users as f64 * 1e6).round() / 1e6);
                json!({ "cut": group.cut, "labels": group.labels, "users": group.users, "reached": reached, "share": share })
            })
            .collect();
        let mut body = json!({
            "rollup": milestone.name,
            "window": width.name,
            "start": time::format_rfc3339(window.start_ms),
            "end": time::format_rfc3339(window.start_ms + width.ms),
            "signed_up": self.config.signed_up,
            "milestone": milestone.event,
            "within": milestone.within,
            "by": self.config.by,
            "count": users,
            "groups": rows,
        });
        let fields = body.as_object_mut().expect("a JSON object");
        if !settings.cohorts.is_empty() {
            fields.insert("cohorts".into(), json!(settings.cohorts));
        }
        if untracked > 0 {
            // Shares are of the users followed; say how many were not.
            fields.insert("untracked_users".into(), json!(untracked));
        }
        Output { subject: format!("{}.{}.{}", settings.subject_prefix, milestone.name, width.name), body }
    }
}

/// The user's key: the first 16 bytes of the SHA-256 of their id.
fn user_key(event: &Map<String, Value>, settings: &Settings) -> Option<u128> {
    let id = event.get(&settings.user_field)?.as_str()?;
    let digest = Sha256::digest(id.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    Some(u128::from_be_bytes(key))
}

/// The key a remembered user is kept under: the first 8 bytes of theirs.
fn short_key(key: u128) -> u64 {
    (key >> 64) as u64
}

/// The hour since the Unix epoch that event time `at_ms` falls in.
fn hour_of(at_ms: i64) -> u32 {
    u32::try_from(at_ms.max(0) / HOUR_MS).unwrap_or(u32::MAX)
}

/// The id of `profile`, added if new.
fn intern(state: &mut State, profile: Profile) -> u32 {
    if let Some(id) = state.profile_ids.get(&profile) {
        return *id;
    }
    if state.profiles.len() >= MAX_PROFILES {
        compact(state);
    }
    let profile = if state.profiles.len() >= MAX_PROFILES { other_profile(&profile) } else { profile };
    if let Some(id) = state.profile_ids.get(&profile) {
        return *id;
    }
    let id = state.profiles.len() as u32;
    state.profile_ids.insert(profile.clone(), id);
    state.profiles.push(profile);
    id
}

fn other_profile(profile: &Profile) -> Profile {
    Profile { traits: Labels::new(), groups: profile.groups.iter().map(|(cut, labels)| (cut.clone(), other(labels))).collect() }
}

/// Drops the profiles no followed or remembered user has.
fn compact(state: &mut State) {
    let used: BTreeSet<u32> = state.users.values().map(|u| u.profile).chain(state.remembered.values().map(|u| u.profile)).collect();
    let mut renumbered = HashMap::new();
    let mut kept = Vec::with_capacity(used.len());
    for old in used {
        renumbered.insert(old, kept.len() as u32);
        kept.push(state.profiles[old as usize].clone());
    }
    for user in state.users.values_mut() {
        user.profile = renumbered[&user.profile];
    }
    for user in state.remembered.values_mut() {
        user.profile = renumbered[&user.profile];
    }
    state.profiles = kept;
    state.profile_ids = state.profiles.iter().enumerate().map(|(n, p)| (p.clone(), n as u32)).collect();
}

/// Users in the snapshot as one hex string of 29-byte records (key, sign-up
/// time, profile, reached): a million users are 58 MB instead of several
/// times that as JSON objects.
mod packed {
    use std::collections::HashMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::User;

    const RECORD: usize = 29;

    pub fn serialize<S: Serializer>(users: &HashMap<u128, User>, serializer: S) -> Result<S::Ok, S::Error> {
        write(serializer, users, RECORD, |key, user, bytes| {
            bytes.extend_from_slice(&key.to_be_bytes());
            bytes.extend_from_slice(&user.signed_up_ms.to_be_bytes());
            bytes.extend_from_slice(&user.profile.to_be_bytes());
            bytes.push(user.reached);
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HashMap<u128, User>, D::Error> {
        // Each record is RECORD bytes long, so the slices have their lengths.
        records(deserializer, RECORD, "users", |record| {
            let key = u128::from_be_bytes(record[0..16].try_into().expect("16 bytes"));
            let signed_up_ms = i64::from_be_bytes(record[16..24].try_into().expect("8 bytes"));
            let profile = u32::from_be_bytes(record[24..28].try_into().expect("4 bytes"));
            (key, User { signed_up_ms, profile, reached: record[28] })
        })
    }

    /// The remembered users as 16-byte records (key, profile, hour last seen).
    pub mod remembered {
        use std::collections::HashMap;

        use serde::{Deserializer, Serializer};

        use super::super::Remembered;

        const RECORD: usize = 16;

        pub fn serialize<S: Serializer>(users: &HashMap<u64, Remembered>, serializer: S) -> Result<S::Ok, S::Error> {
            super::write(serializer, users, RECORD, |key, user, bytes| {
                bytes.extend_from_slice(&key.to_be_bytes());
                bytes.extend_from_slice(&user.profile.to_be_bytes());
                bytes.extend_from_slice(&user.seen_hour.to_be_bytes());
            })
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HashMap<u64, Remembered>, D::Error> {
            super::records(deserializer, RECORD, "remembered users", |record| {
                let key = u64::from_be_bytes(record[0..8].try_into().expect("8 bytes"));
                let profile = u32::from_be_bytes(record[8..12].try_into().expect("4 bytes"));
                let seen_hour = u32::from_be_bytes(record[12..16].try_into().expect("4 bytes"));
                (key, Remembered { profile, seen_hour })
            })
        }
    }

    /// `map` as one hex string of `size`-byte records, each written by `record`.
    fn write<S: Serializer, K, V>(serializer: S, map: &HashMap<K, V>, size: usize, record: impl Fn(&K, &V, &mut Vec<u8>)) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(map.len() * size);
        for (key, value) in map {
            record(key, value, &mut bytes);
        }
        serializer.serialize_str(&sluice_plugin::hex(&bytes))
    }

    /// A hex string of `size`-byte records, each read by `read`.
    fn records<'de, D: Deserializer<'de>, K: std::hash::Hash + Eq, V>(
        deserializer: D,
        size: usize,
        what: &str,
        read: impl Fn(&[u8]) -> (K, V),
    ) -> Result<HashMap<K, V>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let bytes = from_hex(&text).map_err(serde::de::Error::custom)?;
        if bytes.len() % size != 0 {
            return Err(serde::de::Error::custom(format!("the {what} are {} bytes, not a whole number of {size}-byte records", bytes.len())));
        }
        Ok(bytes.chunks_exact(size).map(read).collect())
    }

    fn from_hex(text: &str) -> Result<Vec<u8>, String> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(format!("{:?} is not a lower-case hex digit", c as char)),
        };
        if !text.len().is_multiple_of(2) {
            return Err("an odd number of hex digits".into());
        }
        text.as_bytes().chunks_exact(2).map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::Engine;

    const HOUR: i64 = 3_600_000;
    /// 2026-11-23T00:00:00Z.
    const T0: i64 = 1_795_392_000_000;

    fn settings() -> Settings {
        let config = json!({
            "subject_prefix": "agg",
            "late_allowance": "1m",
            "cohorts": ["goal", "experiment_assignments"],
            "rollup": [{ "name": "locks", "events": ["scene_locked"] }],
            "activation": {
                "by": ["source"],
                "windows": ["1d"],
                "milestones": [
                    { "name": "locked_24h", "event": "scene_locked", "within": "24h" },
                    { "name": "exported_48h", "event": "export_succeeded", "within": "48h" },
                ],
            },
        });
        Settings::parse(&config.to_string()).expect("a valid config")
    }

    fn event(name: &str, user: &str, at_ms: i64, fields: Value) -> Vec<u8> {
        let mut body = json!({ "event": name, "user_id": user, "server_ts": time::format_rfc3339(at_ms) });
        body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        body.to_string().into_bytes()
    }

    fn feed(engine: &mut Engine, bodies: &[Vec<u8>]) -> (Vec<Output>, Tally) {
        let mut tally = Tally::default();
        let out = engine.consume(bodies.iter().map(Vec::as_slice), T0 + 30 * 24 * HOUR, &mut tally);
        (out, tally)
    }

    fn sign_ups() -> Vec<Vec<u8>> {
        vec![
            event("user_signed_up", "u1", T0 + HOUR, json!({ "source": "ads", "goal": "creator" })),
            event("user_signed_up", "u2", T0 + 2 * HOUR, json!({ "source": "ads", "goal": "marketer", "experiment_assignments": { "copy": "B" } })),
            event("user_signed_up", "u3", T0 + 3 * HOUR, json!({ "source": "organic", "goal": "creator" })),
            // u1 locks after 23 h: in time. u2 after 25 h: too late.
            event("scene_locked", "u1", T0 + 24 * HOUR, json!({})),
            event("scene_locked", "u2", T0 + 27 * HOUR, json!({})),
            // u1 exports after 47 h; u3 never locks or exports.
            event("export_succeeded", "u1", T0 + 48 * HOUR, json!({})),
            // Someone not followed moves event time past the first day's lock share.
            event("scene_locked", "u9", T0 + 48 * HOUR + 60_000, json!({})),
        ]
    }

    #[test]
    fn a_share_counts_users_who_reached_it_in_time_once_every_user_is_decided() {
        let mut engine = Engine::new(settings());
        let (out, _) = feed(&mut engine, &sign_ups());
        let shares: Vec<&Output> = out.iter().filter(|o| o.subject == "agg.locked_24h.day").collect();
        assert_eq!(shares.len(), 1, "the day's sign-ups are decided for the lock at 2026-11-25T00:01");
        let body = &shares[0].body;
        assert_eq!(body["start"], "2026-11-23T00:00:00.000Z");
        assert_eq!(body["count"], 3, "u3, who never locked, is in the denominator");
        let all: Vec<&Value> = body["groups"].as_array().unwrap().iter().filter(|g| g["cut"] == ALL).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (&all[0]["labels"], &all[0]["users"], &all[0]["reached"], &all[0]["share"]),
            (&json!({ "source": "ads" }), &json!(2), &json!(1), &json!(0.5))
        );
        assert_eq!((&all[1]["labels"], &all[1]["users"], &all[1]["reached"]), (&json!({ "source": "organic" }), &json!(1), &json!(0)));
        let creators = body["groups"].as_array().unwrap().iter().find(|g| g["labels"] == json!({ "source": "ads", "goal": "creator" })).unwrap();
        assert_eq!((&creators["users"], &creators["reached"]), (&json!(1), &json!(1)));
        let variant = body["groups"].as_array().unwrap().iter().find(|g| g["labels"]["variant"] == "B").unwrap();
        assert_eq!((&variant["users"], &variant["reached"], &variant["labels"]["experiment"]), (&json!(1), &json!(0), &json!("copy")));
        assert!(out.iter().all(|o| o.subject != "agg.exported_48h.day"), "the export share waits for 48 h after the day");
        let (out, _) = feed(&mut engine, &[event("scene_locked", "u9", T0 + 72 * HOUR + 60_000, json!({}))]);
        let export = out.iter().find(|o| o.subject == "agg.exported_48h.day").expect("decided at 2026-11-26T00:01");
        assert_eq!((&export.body["count"], &export.body["groups"][0]["reached"]), (&json!(3), &json!(1)));
        assert_eq!(engine.users_followed(), 0, "every user is decided and let go");
    }

    #[test]
    fn a_sign_up_sent_again_is_the_same_user_even_after_every_milestone() {
        let mut engine = Engine::new(settings());
        let mut bodies = sign_ups();
        // u1 has locked and exported by 48 h; signs up again at 48 h 30 s.
        bodies.insert(6, event("user_signed_up", "u1", T0 + 48 * HOUR + 30_000, json!({ "source": "ads", "goal": "creator" })));
        let (out, _) = feed(&mut engine, &bodies);
        let share = out.iter().find(|o| o.subject == "agg.locked_24h.day").unwrap();
        assert_eq!(share.body["count"], 3, "still three users on the first day");
        assert!(out.iter().all(|o| !o.body["start"].as_str().unwrap().starts_with("2026-11-25")), "no cohort on the day of the repeat");
    }

    #[test]
    fn later_events_of_a_followed_user_are_cut_by_their_sign_up_goal() {
        let mut engine = Engine::new(settings());
        let (out, _) =
            feed(&mut engine, &[sign_ups()[0].clone(), event("scene_locked", "u1", T0 + 2 * HOUR, json!({})), event("x", "u1", T0 + 30 * HOUR, json!({}))]);
        assert!(out.is_empty(), "no rollup takes `x`, and the activation does not either: {out:?}");
        let (out, _) = feed(&mut engine, &[event("scene_locked", "u7", T0 + 30 * HOUR, json!({}))]);
        let locks = out.iter().find(|o| o.subject == "agg.locks.minute").unwrap();
        let goal = locks.body["groups"].as_array().unwrap().iter().find(|g| g["cut"] == "goal").unwrap();
        assert_eq!(goal["labels"], json!({ "goal": "creator" }));
    }

    #[test]
    fn the_state_survives_a_snapshot_and_a_milestone_added_by_a_new_version() {
        let mut engine = Engine::new(settings());
        let bodies = sign_ups();
        // The SDK keeps the state and hands it to each call, as here.
        let mut kept = crate::engine::State::default();
        engine.with_state(&mut kept, |engine| feed(engine, &bodies[..4]));
        let kept: crate::engine::State = serde_json::from_slice(&serde_json::to_vec(&kept).unwrap()).unwrap();
        // The new version lists the export first.
        let mut config = settings();
        config.activation.as_mut().unwrap().milestones.reverse();
        let mut next = Engine::new(config);
        let mut kept = next.adopt(kept).unwrap();
        let (out, _) = next.with_state(&mut kept, |next| feed(next, &bodies[4..]));
        let lock = out.iter().find(|o| o.subject == "agg.locked_24h.day").unwrap();
        assert_eq!((&lock.body["count"], &lock.body["groups"][0]["reached"]), (&json!(3), &json!(1)), "u1's lock, before the swap, is kept");
    }

    #[test]
    fn users_packed_in_the_snapshot_read_back_the_same() {
        let mut state = State::default();
        for n in 0..1000u128 {
            state.users.insert(n * 0x1234_5678_9abc_def0_1234, User { signed_up_ms: T0 + n as i64, profile: (n % 7) as u32, reached: (n % 4) as u8 });
        }
        let text = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back.users, state.users);
        let broken = text.replacen("\"users\":\"", "\"users\":\"0", 1);
        assert!(serde_json::from_str::<State>(&broken).is_err());
    }

    /// The `goal` labels of the minute's lock rollup published by `out`.
    fn lock_goals(out: &[Output], minute_of: i64) -> Vec<Value> {
        let start = time::format_rfc3339(minute_of);
        let locks = out.iter().find(|o| o.subject == "agg.locks.minute" && o.body["start"] == start.as_str()).expect("the minute's locks");
        locks.body["groups"].as_array().unwrap().iter().filter(|g| g["cut"] == "goal").map(|g| g["labels"]["goal"].clone()).collect()
    }

    #[test]
    fn a_users_goal_is_remembered_long_after_sign_up_while_they_are_active_and_forgotten_after_remember_for() {
        const DAY: i64 = 24 * HOUR;
        let mut engine = Engine::new(settings());
        // u1 signs up, then is active every 20 days; u2 signs up and is not seen again for 31 days.
        let mut bodies = vec![sign_ups()[0].clone(), sign_ups()[1].clone()];
        for day in [20, 40, 60] {
            bodies.push(event("scene_locked", "u1", T0 + day * DAY, json!({})));
        }
        bodies.insert(3, event("scene_locked", "u2", T0 + 2 * HOUR + 31 * DAY, json!({})));
        // Event time moves on past each of those minutes.
        bodies.push(event("scene_locked", "u9", T0 + 70 * DAY, json!({})));
        let mut tally = Tally::default();
        let out = engine.consume(bodies.iter().map(Vec::as_slice), T0 + 71 * DAY, &mut tally);
        for day in [20, 40, 60] {
            assert_eq!(lock_goals(&out, T0 + day * DAY), [json!("creator")], "day {day}: u1 is still a creator");
        }
        assert_eq!(lock_goals(&out, T0 + 2 * HOUR + 31 * DAY), [json!("(absent)")], "u2 was unseen for 31 days: forgotten");
        assert_eq!(engine.users_followed(), 0, "nobody is followed after 48 h");
        assert_eq!(engine.users_remembered(), 1, "u1 only");
    }

    #[test]
    fn remembered_users_survive_a_snapshot() {
        let mut engine = Engine::new(settings());
        let mut kept = crate::engine::State::default();
        engine.with_state(&mut kept, |engine| feed(engine, &sign_ups()[..3]));
        let text = serde_json::to_string(&kept).unwrap();
        let back: crate::engine::State = serde_json::from_str(&text).unwrap();
        let mut next = Engine::new(settings());
        let mut kept = next.adopt(back).unwrap();
        let at = T0 + 10 * 24 * HOUR;
        let (out, _) =
            next.with_state(&mut kept, |next| feed(next, &[event("scene_locked", "u2", at, json!({})), event("scene_locked", "u9", at + HOUR, json!({}))]));
        assert_eq!(lock_goals(&out, at), [json!("marketer")]);
        let broken = text.replacen("\"remembered\":\"", "\"remembered\":\"00", 1);
        assert!(serde_json::from_str::<crate::engine::State>(&broken).is_err(), "a record cut short is refused");
    }

    #[test]
    fn past_max_remembered_sign_ups_are_counted_and_followed_users_keep_their_goal() {
        let mut config = settings();
        config.activation.as_mut().unwrap().max_remembered = 1;
        let mut engine = Engine::new(config);
        let (_, tally) = feed(&mut engine, &sign_ups()[..3]);
        assert_eq!((tally.unremembered_users, engine.users_remembered(), engine.users_followed()), (2, 1, 3));
        // u3 is not remembered but still followed: their goal comes from the sign-up they are followed by.
        let at = T0 + 4 * HOUR;
        let (out, _) = feed(&mut engine, &[event("scene_locked", "u3", at, json!({})), event("scene_locked", "u9", at + HOUR, json!({}))]);
        assert_eq!(lock_goals(&out, at), [json!("creator")]);
    }

    #[test]
    fn past_max_users_sign_ups_are_counted_as_untracked() {
        let mut config = settings();
        config.activation.as_mut().unwrap().max_users = 2;
        let mut engine = Engine::new(config);
        let (out, tally) = feed(&mut engine, &sign_ups());
        assert_eq!(tally.untracked_users, 1);
        let share = out.iter().find(|o| o.subject == "agg.locked_24h.day").unwrap();
        assert_eq!((&share.body["count"], &share.body["untracked_users"]), (&json!(2), &json!(1)));
    }
}
