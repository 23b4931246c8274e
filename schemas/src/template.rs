//! Templates: one id, one variant per locale, one part per channel.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: String,
    /// The locale of this variant (`en`, `ko`, `ko-KR`).
    pub locale: String,
    /// This variant is used when no locale of the user's matches. The first
    /// variant stored for an id is the default until another claims it.
    #[serde(default)]
    pub default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailPart>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushPart {
    pub title: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsPart {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailPart {
    pub subject: String,
    pub text: String,
    /// Rendered with HTML auto-escaping of every variable.
    pub html: String,
}
