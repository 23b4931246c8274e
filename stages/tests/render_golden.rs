//! Golden-file tests of the render stage.
//!
//! Each `golden/*.json` holds template variants, a user, a request, the
//! item's targets and the expected outcome: chosen locale, rendered content
//! per channel and `render_failed` events. Set `HERALD_UPDATE_GOLDEN=1` to
//! rewrite the `expected` sections from the current output (then review the diff).

use async_trait::async_trait;
use herald_schemas::stage::ManualClock;
use herald_schemas::store::{StoreError, TemplateStore};
use herald_schemas::{
    NotificationId, NotificationRequest, RenderedContent, RequestEnvelope, Stage, StageOutput, Target, Template, User,
    WorkItem,
};
use herald_stages::render::{RenderLimits, RenderStage, TemplateCache};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A read-only template store over the case's variants (a test double).
struct CaseTemplates(Vec<Template>);

#[async_trait]
impl TemplateStore for CaseTemplates {
    async fn put_template(&self, _: &Template) -> Result<bool, StoreError> {
        Err(StoreError::Closed)
    }

    async fn get_template(&self, id: &str) -> Result<Vec<Template>, StoreError> {
        Ok(self.0.iter().filter(|t| t.id == id).cloned().collect())
    }
}

#[derive(Debug, Deserialize, Serialize)]
struct Case {
    description: String,
    templates: Vec<Template>,
    user: User,
    request: NotificationRequest,
    targets: Vec<Target>,
    expected: Value,
}

#[derive(Debug, PartialEq, Serialize)]
struct Outcome {
    locale: Option<String>,
    rendered: Vec<RenderedContent>,
    events: Vec<Value>,
}

async fn run(case: &Case) -> Outcome {
    let clock = ManualClock::new(1_700_000_000_000);
    let cache = Arc::new(TemplateCache::new(8, Duration::from_secs(30), Arc::new(clock)));
    let mut stage =
        RenderStage::with_cache(Arc::new(CaseTemplates(case.templates.clone())), RenderLimits::default(), cache);
    let mut item = WorkItem::new(RequestEnvelope::new(
        NotificationId("golden".into()),
        "golden-client".into(),
        1_700_000_000_000,
        case.request.clone(),
    ));
    item.user = Some(case.user.clone());
    item.targets = case.targets.clone();
    let mut out = StageOutput::default();
    stage.process(vec![item], &mut out).await.expect("render never fails on a healthy store");
    let item = out.items.into_iter().next();
    Outcome {
        locale: item.as_ref().and_then(|i| i.locale.clone()),
        rendered: item.map(|i| i.rendered.into_iter().map(|(_, r)| r).collect()).unwrap_or_default(),
        events: out
            .events
            .iter()
            .map(|e| serde_json::json!({ "kind": e.kind, "channel": e.channel, "reason": e.reason }))
            .collect(),
    }
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/golden exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn golden_files() {
    let update = std::env::var_os("HERALD_UPDATE_GOLDEN").is_some();
    let paths = cases();
    assert!(paths.len() >= 8, "golden cases are missing");
    let mut failures = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("readable golden file");
        let mut case: Case = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let actual = serde_json::to_value(run(&case).await).expect("serializable outcome");
        if update {
            case.expected = actual;
            let pretty = serde_json::to_string_pretty(&case).expect("serializable case") + "\n";
            std::fs::write(&path, pretty).expect("writable golden file");
        } else if actual != case.expected {
            failures.push(format!(
                "{} ({}):\nexpected {}\nactual   {}",
                path.display(),
                case.description,
                case.expected,
                actual
            ));
        }
    }
    assert!(failures.is_empty(), "golden mismatches:\n{}", failures.join("\n\n"));
}
