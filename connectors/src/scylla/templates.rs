//! [`TemplateStore`] on `templates`: one partition per template id, one row per locale, and the
//! default variant named by the partition's static `default_locale` (see the module doc of
//! [`crate::scylla`]).

use super::ScyllaError;
use super::state::{CAS_ATTEMPTS, ScyllaState, cas_backoff};
use super::statements::Stmt;
use super::values::{from_json, to_json};
use ::scylla::value::MaybeUnset;
use async_trait::async_trait;
use herald_schemas::store::{StoreError, TemplateStore};
use herald_schemas::template::Template;

const TABLE: &str = "templates";

/// The variants as stored (in locale order) with their `default` flags set from the partition's
/// `default_locale`: exactly one default when there is any variant. A `default_locale` naming no
/// stored variant (never written, or a crash between a variant's write and its claim) makes the
/// first variant the default.
pub fn with_default(mut variants: Vec<Template>, default_locale: Option<&str>) -> Vec<Template> {
    let default_at = default_locale.and_then(|d| variants.iter().position(|v| v.locale == d)).unwrap_or(0);
    for (i, variant) in variants.iter_mut().enumerate() {
        variant.default = i == default_at;
    }
    variants
}

#[async_trait]
impl TemplateStore for ScyllaState {
    /// Writes the variant (an LWT, so "was it new" is exact), claiming the default when the
    /// variant says so; otherwise makes it the default only if the template has none yet.
    async fn put_template(&self, template: &Template) -> Result<bool, StoreError> {
        let id = template.id.as_str();
        let locale = template.locale.as_str();
        let data = to_json(TABLE, template)?;
        let claim = if template.default { MaybeUnset::Set(locale) } else { MaybeUnset::Unset };
        let mut fresh = None;
        for round in 0..CAS_ATTEMPTS {
            cas_backoff(round).await;
            if self.lwt(Stmt::TemplateInsert, (id, locale, &data, claim)).await?.applied {
                fresh = Some(true);
                break;
            }
            // The variant exists. Nothing deletes variants, so this applies; the loop only guards
            // against a row vanishing in between.
            if self.lwt(Stmt::TemplateUpdate, (&data, claim, id, locale)).await?.applied {
                fresh = Some(false);
                break;
            }
        }
        let fresh = fresh.ok_or_else(|| ScyllaError::Contention {
            table: TABLE,
            key: format!("{id}/{locale}"),
            attempts: CAS_ATTEMPTS,
        })?;
        if !template.default {
            self.lwt(Stmt::TemplateDefaultIfNone, (locale, id)).await?;
        }
        Ok(fresh)
    }

    async fn get_template(&self, id: &str) -> Result<Vec<Template>, StoreError> {
        let rows: Vec<(String, Vec<u8>, Option<String>)> = self.select_all(Stmt::TemplateSelect, (id,)).await?;
        let default_locale = rows.first().and_then(|(_, _, d)| d.clone());
        let variants = rows
            .iter()
            .map(|(locale, data, _)| {
                let mut variant: Template = from_json(TABLE, data)?;
                // The key is the truth for where it is stored.
                variant.id = id.to_string();
                variant.locale = locale.clone();
                Ok(variant)
            })
            .collect::<Result<Vec<Template>, ScyllaError>>()?;
        Ok(with_default(variants, default_locale.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::template::SmsPart;

    fn variant(locale: &str, default: bool) -> Template {
        Template {
            id: "welcome".into(),
            locale: locale.into(),
            default,
            push: None,
            sms: Some(SmsPart { text: format!("hi {locale}") }),
            email: None,
        }
    }

    fn defaults(variants: &[Template]) -> Vec<(&str, bool)> {
        variants.iter().map(|v| (v.locale.as_str(), v.default)).collect()
    }

    #[test]
    fn the_named_locale_is_the_only_default() {
        // Stored flags do not matter: the partition's default_locale does.
        let stored = vec![variant("en", true), variant("ko", false), variant("pt", true)];
        assert_eq!(defaults(&with_default(stored.clone(), Some("ko"))), [("en", false), ("ko", true), ("pt", false)]);
        // Unset, or naming no variant: the first.
        assert_eq!(defaults(&with_default(stored.clone(), None)), [("en", true), ("ko", false), ("pt", false)]);
        assert_eq!(defaults(&with_default(stored, Some("fr"))), [("en", true), ("ko", false), ("pt", false)]);
        assert!(with_default(vec![], Some("en")).is_empty());
    }

    #[test]
    fn templates_round_trip_as_json() {
        let t = variant("ko", true);
        assert_eq!(from_json::<Template>(TABLE, &to_json(TABLE, &t).unwrap()).unwrap(), t);
    }
}
