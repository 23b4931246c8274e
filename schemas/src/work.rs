//! The item that moves through the stages.

use crate::contacts::User;
use crate::job::Target;
use crate::request::{ChannelKind, RequestEnvelope};
use serde::{Deserialize, Serialize};

/// One notification on its way through validate → enrich → dedup → throttle → render.
///
/// Each stage fills in or narrows a part: enrich sets `user` and `targets`,
/// throttle removes targets the user refuses, render sets `rendered`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    pub envelope: RequestEnvelope,
    pub user: Option<User>,
    pub targets: Vec<Target>,
    /// The targets of the request's fallback channels, held back while push targets remain.
    pub fallback_targets: Vec<Target>,
    /// Locale of the template variant chosen by render.
    pub locale: Option<String>,
    /// One rendering per channel, shared by every target on it.
    pub rendered: Vec<(ChannelKind, RenderedContent)>,
}

impl WorkItem {
    pub fn new(envelope: RequestEnvelope) -> Self {
        Self {
            envelope,
            user: None,
            targets: Vec::new(),
            fallback_targets: Vec::new(),
            locale: None,
            rendered: Vec::new(),
        }
    }

    pub fn rendered_for(&self, channel: ChannelKind) -> Option<&RenderedContent> {
        self.rendered.iter().find(|(c, _)| *c == channel).map(|(_, r)| r)
    }
}

/// A message rendered for one channel, as plain strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderedContent {
    Push { title: String, body: String },
    Sms { text: String },
    Email { subject: String, text: String, html: String },
}

impl RenderedContent {
    pub fn channel(&self) -> ChannelKind {
        match self {
            RenderedContent::Push { .. } => ChannelKind::Push,
            RenderedContent::Sms { .. } => ChannelKind::Sms,
            RenderedContent::Email { .. } => ChannelKind::Email,
        }
    }
}
