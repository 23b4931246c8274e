//! Users the tests generate, and the delivery targets a notification to them must reach.
//!
//! The expected targets are computed here from the generated data and the contract's routing rules
//! alone, never from what the server reports: push reaches every active device, sms the phone,
//! email the address; a channel opt-out drops that channel; a category opt-out drops the whole
//! notification unless it is `transactional`. Frequency caps depend on order and are applied by
//! the test that submits.

use herald_schemas::{ChannelKind, TRANSACTIONAL};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

pub const PLATFORMS: [&str; 3] = ["ios", "android", "web"];
const LOCALES: [Option<&str>; 4] = [Some("en"), Some("ko-KR"), Some("fr-FR"), None];
const TIMEZONES: [Option<&str>; 5] =
    [Some("Asia/Seoul"), Some("Europe/Paris"), Some("America/New_York"), Some("UTC"), None];

#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub platform: &'static str,
    pub token: String,
    pub active: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Contact {
    pub id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub devices: Vec<Device>,
    pub opt_out_channels: Vec<ChannelKind>,
    pub opt_out_categories: Vec<String>,
}

/// One address a notification must be delivered to, as the outbox line names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub channel: ChannelKind,
    /// Device token, phone number or email address (the line's `target`).
    pub address: String,
}

/// How often each feature occurs in a generated population.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub phone: f64,
    pub email: f64,
    pub devices: (usize, usize),
    pub inactive_device: f64,
    pub opt_out_sms: f64,
    pub opt_out_email: f64,
    pub opt_out_push: f64,
    pub opt_out_marketing: f64,
    /// Opting out of `transactional` must have no effect.
    pub opt_out_transactional: f64,
}

impl Mix {
    /// Varied contacts: some unreachable on a channel, some opted out, some inactive devices.
    pub const VARIED: Mix = Mix {
        phone: 0.8,
        email: 0.85,
        devices: (0, 3),
        inactive_device: 0.15,
        opt_out_sms: 0.15,
        opt_out_email: 0.05,
        opt_out_push: 0.05,
        opt_out_marketing: 0.2,
        opt_out_transactional: 0.05,
    };

    /// Everyone reachable everywhere, no opt-outs: every request fans out to known targets.
    pub const REACHABLE: Mix = Mix {
        phone: 1.0,
        email: 1.0,
        devices: (1, 2),
        inactive_device: 0.0,
        opt_out_sms: 0.0,
        opt_out_email: 0.0,
        opt_out_push: 0.0,
        opt_out_marketing: 0.0,
        opt_out_transactional: 0.0,
    };
}

impl Contact {
    /// A random user `id` (the number `n` makes its phone, email and tokens unique).
    pub fn random(rng: &mut impl Rng, id: String, n: usize, mix: &Mix) -> Self {
        let phone = rng.random_bool(mix.phone).then(|| format!("+8210{:08}", n));
        let email = rng.random_bool(mix.email).then(|| format!("user{n}@example.com"));
        let devices = (0..rng.random_range(mix.devices.0..=mix.devices.1))
            .map(|d| {
                let platform = *PLATFORMS.choose(rng).expect("platforms");
                Device {
                    id: format!("d{d}"),
                    platform,
                    token: format!("{platform}-tok-{n}-{d}"),
                    active: !rng.random_bool(mix.inactive_device),
                }
            })
            .collect();
        let mut opt_out_channels = Vec::new();
        for (channel, p) in [
            (ChannelKind::Push, mix.opt_out_push),
            (ChannelKind::Sms, mix.opt_out_sms),
            (ChannelKind::Email, mix.opt_out_email),
        ] {
            if rng.random_bool(p) {
                opt_out_channels.push(channel);
            }
        }
        let mut opt_out_categories = Vec::new();
        if rng.random_bool(mix.opt_out_marketing) {
            opt_out_categories.push("marketing".to_string());
        }
        if rng.random_bool(mix.opt_out_transactional) {
            opt_out_categories.push(TRANSACTIONAL.to_string());
        }
        Self {
            id,
            email,
            phone,
            locale: LOCALES.choose(rng).expect("locales").map(str::to_string),
            timezone: TIMEZONES.choose(rng).expect("timezones").map(str::to_string),
            devices,
            opt_out_channels,
            opt_out_categories,
        }
    }

    /// The body of `PUT /v1/users/{id}`.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "devices": self.devices.iter().map(|d| json!({
                "id": d.id, "platform": d.platform, "token": d.token, "active": d.active,
            })).collect::<Vec<_>>(),
            "preferences": { "opt_out": {
                "channels": self.opt_out_channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "categories": self.opt_out_categories,
            }},
        });
        for (field, value) in
            [("email", &self.email), ("phone", &self.phone), ("locale", &self.locale), ("timezone", &self.timezone)]
        {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        body
    }

    pub fn opted_out_of_category(&self, category: &str) -> bool {
        category != TRANSACTIONAL && self.opt_out_categories.iter().any(|c| c == category)
    }

    /// The targets a notification on `channels` in `category` reaches, before frequency caps.
    pub fn targets(&self, channels: &[ChannelKind], category: &str) -> Vec<Target> {
        if self.opted_out_of_category(category) {
            return Vec::new();
        }
        let mut targets = Vec::new();
        for &channel in channels {
            if self.opt_out_channels.contains(&channel) {
                continue;
            }
            let addresses: Vec<&str> = match channel {
                ChannelKind::Push => self.devices.iter().filter(|d| d.active).map(|d| d.token.as_str()).collect(),
                ChannelKind::Sms => self.phone.as_deref().into_iter().collect(),
                ChannelKind::Email => self.email.as_deref().into_iter().collect(),
            };
            targets.extend(addresses.into_iter().map(|a| Target { channel, address: a.to_string() }));
        }
        targets
    }

    /// Whether any of `channels` has an address, opt-outs aside: the enrich stage stops a
    /// notification with none (`no_target`) before the throttle stage looks at opt-outs.
    pub fn reachable_on(&self, channels: &[ChannelKind]) -> bool {
        channels.iter().any(|channel| match channel {
            ChannelKind::Push => self.devices.iter().any(|d| d.active),
            ChannelKind::Sms => self.phone.is_some(),
            ChannelKind::Email => self.email.is_some(),
        })
    }

    /// The platform of the device with this token.
    pub fn platform_of(&self, token: &str) -> Option<&'static str> {
        self.devices.iter().find(|d| d.token == token).map(|d| d.platform)
    }
}

/// A random non-empty set of channels, in canonical order.
pub fn random_channels(rng: &mut impl Rng) -> Vec<ChannelKind> {
    loop {
        let channels: Vec<ChannelKind> = ChannelKind::ALL.into_iter().filter(|_| rng.random_bool(0.6)).collect();
        if !channels.is_empty() {
            return channels;
        }
    }
}

pub fn channel_names(channels: &[ChannelKind]) -> Vec<&'static str> {
    channels.iter().map(|c| c.as_str()).collect()
}
