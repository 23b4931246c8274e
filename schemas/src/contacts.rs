//! Users and how to reach them.

use crate::request::ChannelKind;
use serde::{Deserialize, Serialize};

/// A recipient: one email, one phone, many devices, a locale and a timezone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct User {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// E.164: `+` and 8 to 15 digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// BCP 47 tag such as `ko-KR`; drives template locale selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA name such as `Asia/Seoul`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub preferences: Preferences,
    /// Addresses (device tokens, the phone, the email) a provider reported as dead; they are never
    /// tried again. Kept by Herald: a `PUT` of the user keeps the entries for addresses it still
    /// names, so re-sending a dead token does not revive it; a new address starts reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

impl User {
    /// Whether `address` may be sent to (not reported dead).
    pub fn reaches(&self, address: &str) -> bool {
        !self.unreachable.iter().any(|a| a == address)
    }

    /// Whether the user has `address` at all (a device token, the phone or the email).
    pub fn has_address(&self, address: &str) -> bool {
        self.devices.iter().any(|d| d.token == address)
            || self.phone.as_deref() == Some(address)
            || self.email.as_deref() == Some(address)
    }

    /// Carries `previous`'s dead addresses over to this new version of the user, for those it
    /// still has.
    pub fn keep_unreachable_from(&mut self, previous: &User) {
        for address in &previous.unreachable {
            if self.has_address(address) && self.reaches(address) {
                self.unreachable.push(address.clone());
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Ios,
    Android,
    Web,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    pub platform: Platform,
    /// APNs device token, FCM registration token, or Web Push subscription JSON.
    pub token: String,
    /// False once a provider said the token is dead; never tried again.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    #[serde(default)]
    pub opt_out: OptOut,
    /// When the user does not want to be disturbed, in their `timezone`: notifications other than
    /// `transactional` that fall inside wait for the window's end. Replaces the category's
    /// default window (`[quiet_hours]` in the configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietWindow>,
}

/// A daily window of local wall-clock times, `"HH:MM"` or `"HH:MM:SS"`; it spans midnight when
/// `end` is before `start` (`22:00` → `07:00`). Equal times make an empty window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietWindow {
    pub start: String,
    pub end: String,
}

/// What the user refuses. Channel opt-outs always hold; category opt-outs
/// hold for every category but `transactional`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OptOut {
    #[serde(default)]
    pub channels: Vec<ChannelKind>,
    #[serde(default)]
    pub categories: Vec<String>,
}

impl OptOut {
    /// Opts out of `category`; whether it is new.
    pub fn add_category(&mut self, category: &str) -> bool {
        let fresh = !self.categories.iter().any(|c| c == category);
        if fresh {
            self.categories.push(category.to_string());
        }
        fresh
    }
}
