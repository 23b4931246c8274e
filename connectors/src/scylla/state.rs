//! [`ScyllaState`]: one session, every statement prepared, and the request helpers every store uses.

use super::ScyllaError;
use super::options::ScyllaOptions;
use super::statements::{Prepared, Stmt};
use super::values::LwtRow;
use ::scylla::client::execution_profile::ExecutionProfile;
use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::deserialize::row::DeserializeRow;
use ::scylla::policies::load_balancing::DefaultPolicy;
use ::scylla::policies::retry::DefaultRetryPolicy;
use ::scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use ::scylla::response::PagingState;
use ::scylla::serialize::batch::BatchValues;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::batch::Batch;
use ::scylla::value::Row;
use futures_util::{StreamExt, TryStreamExt, stream};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Requests one store call keeps in flight at most (reads of a batch of users, claims of distinct
/// dedup keys, …): enough to hide a round trip per item, few enough that one large call does not
/// crowd out the others on a connection.
pub const CONCURRENCY: usize = 64;

/// Compare-and-set rounds (read, decide, conditional write) before a call gives up with
/// [`ScyllaError::Contention`]. A round loses only to a write that succeeded, so this is room for
/// a few dozen writers racing on one row; between rounds [`cas_backoff`] waits.
pub(crate) const CAS_ATTEMPTS: u32 = 32;

/// Waits before compare-and-set round `round` (the first is 0 and does not wait): a random pause
/// of up to 2^round ms, at most 64 ms, so writers that lost to each other do not meet again.
pub(crate) async fn cas_backoff(round: u32) {
    if round == 0 {
        return;
    }
    let ceiling_ms = 1_u64 << round.min(6);
    // A fresh SipHash key per call: random enough for jitter, without a random number crate.
    let jitter_ms = RandomState::new().build_hasher().finish() % (ceiling_ms + 1);
    tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
}

/// The ScyllaDB state backend: implements every store of [`herald_schemas::store`]. Cheap to clone
/// (one shared session).
#[derive(Clone)]
pub struct ScyllaState {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    prepared: Prepared,
    options: ScyllaOptions,
}

impl fmt::Debug for ScyllaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaState")
            .field("nodes", &self.inner.options.nodes)
            .field("keyspace", &self.inner.options.keyspace.as_str())
            .finish_non_exhaustive()
    }
}

/// A session with the options' consistency, timeout and credentials; see the module doc of
/// [`crate::scylla`] for the policies.
pub(crate) async fn open_session(options: &ScyllaOptions) -> Result<Session, ScyllaError> {
    let profile = ExecutionProfile::builder()
        .consistency(options.consistency)
        .serial_consistency(Some(options.serial_consistency()))
        .request_timeout(Some(options.request_timeout))
        // Both are the driver's defaults, named so they read as decisions: token- (and shard-)
        // aware routing, and retries of idempotent statements only.
        .load_balancing_policy(Arc::new(DefaultPolicy::default()))
        .retry_policy(Arc::new(DefaultRetryPolicy::new()))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&options.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
        .keyspaces_to_fetch([options.keyspace.as_str()]);
    if let (Some(user), Some(password)) = (&options.user, &options.password) {
        builder = builder.user(user, password.expose());
    }
    builder
        .build()
        .await
        .map_err(|source| ScyllaError::Connect { nodes: options.nodes.join(","), source: Box::new(source) })
}

impl ScyllaState {
    /// Connects and prepares every statement. Fails if the keyspace or a table is missing (run
    /// [`super::migrate`] first).
    pub async fn connect(options: ScyllaOptions) -> Result<Self, ScyllaError> {
        options.validate()?;
        let session = open_session(&options).await?;
        let prepared = Prepared::prepare(&session, &options).await?;
        info!(
            nodes = options.nodes.len(),
            keyspace = %options.keyspace,
            consistency = ?options.consistency,
            timeout_ms = options.request_timeout.as_millis() as u64,
            "connected to ScyllaDB"
        );
        Ok(Self { inner: Arc::new(Inner { session, prepared, options }) })
    }

    pub fn options(&self) -> &ScyllaOptions {
        &self.inner.options
    }

    /// The driver's session, for what the stores do not cover (health checks, metrics).
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    fn failed(stmt: Stmt) -> impl Fn(::scylla::errors::ExecutionError) -> ScyllaError {
        move |source| ScyllaError::Request { statement: stmt, table: stmt.table(), source: Box::new(source) }
    }

    fn unreadable(stmt: Stmt) -> impl Fn(String) -> ScyllaError {
        move |detail| ScyllaError::corrupt(stmt.table(), format!("{stmt:?}: {detail}"))
    }

    /// Runs a statement whose rows are not wanted (a write).
    pub(crate) async fn write(&self, stmt: Stmt, values: impl SerializeRow) -> Result<(), ScyllaError> {
        let prepared = self.inner.prepared.get(stmt);
        self.inner.session.execute_unpaged(prepared, values).await.map_err(Self::failed(stmt))?;
        Ok(())
    }

    /// The row a statement selects by its whole primary key, if there is one.
    pub(crate) async fn select_one<R>(&self, stmt: Stmt, values: impl SerializeRow) -> Result<Option<R>, ScyllaError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let prepared = self.inner.prepared.get(stmt);
        let result = self.inner.session.execute_unpaged(prepared, values).await.map_err(Self::failed(stmt))?;
        let rows = result.into_rows_result().map_err(|e| Self::unreadable(stmt)(e.to_string()))?;
        rows.maybe_first_row::<R>().map_err(|e| Self::unreadable(stmt)(e.to_string()))
    }

    /// Every row a statement selects from one partition, page by page.
    pub(crate) async fn select_all<R>(&self, stmt: Stmt, values: impl SerializeRow) -> Result<Vec<R>, ScyllaError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let prepared = self.inner.prepared.get(stmt);
        let mut all = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let (result, next) =
                self.inner.session.execute_single_page(prepared, &values, paging).await.map_err(Self::failed(stmt))?;
            let rows = result.into_rows_result().map_err(|e| Self::unreadable(stmt)(e.to_string()))?;
            for row in rows.rows::<R>().map_err(|e| Self::unreadable(stmt)(e.to_string()))? {
                all.push(row.map_err(|e| Self::unreadable(stmt)(e.to_string()))?);
            }
            match next.into_paging_control_flow() {
                ControlFlow::Break(()) => return Ok(all),
                ControlFlow::Continue(state) => paging = state,
            }
        }
    }

    /// Runs a lightweight transaction: whether it applied, and the row as it was.
    pub(crate) async fn lwt(&self, stmt: Stmt, values: impl SerializeRow) -> Result<LwtRow, ScyllaError> {
        let prepared = self.inner.prepared.get(stmt);
        let result = self.inner.session.execute_unpaged(prepared, values).await.map_err(Self::failed(stmt))?;
        let rows = result.into_rows_result().map_err(|e| Self::unreadable(stmt)(e.to_string()))?;
        let names: Vec<String> = rows.column_specs().iter().map(|spec| spec.name().to_string()).collect();
        let row = rows
            .maybe_first_row::<Row>()
            .map_err(|e| Self::unreadable(stmt)(e.to_string()))?
            .ok_or_else(|| Self::unreadable(stmt)("no row in a conditional statement's answer".into()))?;
        LwtRow::new(names, row.columns).map_err(Self::unreadable(stmt))
    }

    /// A prepared statement, to put in a batch.
    pub(crate) fn prepared(&self, stmt: Stmt) -> &::scylla::statement::prepared::PreparedStatement {
        self.inner.prepared.get(stmt)
    }

    /// Runs a batch; `stmt` names it in errors.
    pub(crate) async fn run_batch(
        &self,
        stmt: Stmt,
        batch: &Batch,
        values: impl BatchValues,
    ) -> Result<(), ScyllaError> {
        self.inner.session.batch(batch, values).await.map_err(Self::failed(stmt))?;
        Ok(())
    }
}

/// Answers `one(item)` for every item, at most [`CONCURRENCY`] at a time; answers in the items'
/// order.
pub(crate) async fn each<'a, T, A, F, Fut>(items: &'a [T], one: F) -> Result<Vec<A>, ScyllaError>
where
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = Result<A, ScyllaError>>,
{
    // The futures are made first (they do nothing until polled), so the stream holds no closure:
    // a stream mapping a closure over borrowed items defeats the compiler's proof that the
    // trait methods' futures are `Send`.
    let calls: Vec<Fut> = items.iter().map(one).collect();
    stream::iter(calls).buffered(CONCURRENCY).try_collect().await
}

/// Like [`each`], but items with the same key run one after another, in the order given, so a
/// later one sees what an earlier one wrote; distinct keys run concurrently.
pub(crate) async fn each_in_key_order<'a, T, A, K, F, Fut>(
    items: &'a [T],
    key: K,
    one: F,
) -> Result<Vec<A>, ScyllaError>
where
    K: Fn(&'a T) -> &'a str,
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = Result<A, ScyllaError>>,
{
    let groups = groups_by_key(items, key);
    let one = &one;
    let answered: Vec<Vec<(usize, A)>> = stream::iter(groups)
        .map(|group| async move {
            let mut answers = Vec::with_capacity(group.len());
            for i in group {
                let item = items.get(i).ok_or(ScyllaError::Internal("group index out of range"))?;
                answers.push((i, one(item).await?));
            }
            Ok::<_, ScyllaError>(answers)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut answers: Vec<Option<A>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    for (i, answer) in answered.into_iter().flatten() {
        if let Some(slot) = answers.get_mut(i) {
            *slot = Some(answer);
        }
    }
    answers.into_iter().collect::<Option<Vec<A>>>().ok_or(ScyllaError::Internal("an item went unanswered"))
}

/// The indexes of `items` grouped by key, each group in the items' order, groups by first
/// appearance.
pub(crate) fn groups_by_key<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> &'a str) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let at = *by_key.entry(key(item)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        if let Some(group) = groups.get_mut(at) {
            group.push(i);
        }
    }
    groups
}

/// The last item of each key, in the order of those last items: what a batch of plain writes
/// should write when a key comes twice (all writes of a batch share a timestamp, and the server
/// would then keep the larger value, not the later one).
pub(crate) fn last_per_key<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> &'a str) -> Vec<&'a T> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        last.insert(key(item), i);
    }
    items.iter().enumerate().filter(|(i, item)| last.get(key(item)) == Some(i)).map(|(_, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn groups_keep_item_order_and_first_appearance() {
        let items = ["a", "b", "a", "c", "b", "a"];
        assert_eq!(groups_by_key(&items, |s| s), vec![vec![0, 2, 5], vec![1, 4], vec![3]]);
        assert!(groups_by_key::<&str>(&[], |s| s).is_empty());
    }

    #[test]
    fn the_last_write_of_a_key_wins() {
        let items = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3)];
        let kept: Vec<_> = last_per_key(&items, |(k, _)| k).into_iter().copied().collect();
        assert_eq!(kept, [("b", 1), ("c", 1), ("a", 3)]);
    }

    #[tokio::test]
    async fn items_of_one_key_run_in_order_and_answers_come_back_in_item_order() {
        let items: Vec<(String, u32)> =
            [("k1", 1), ("k2", 1), ("k1", 2), ("k3", 1), ("k1", 3)].map(|(k, n)| (k.to_string(), n)).to_vec();
        let seen = Mutex::new(Vec::new());
        let answers = each_in_key_order(
            &items,
            |(k, _)| k,
            |(k, n)| {
                let seen = &seen;
                async move {
                    // Later items of a key are slower to start, so a reordering would show.
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(5 - n))).await;
                    seen.lock().unwrap().push((k.clone(), *n));
                    Ok(format!("{k}#{n}"))
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(answers, ["k1#1", "k2#1", "k1#2", "k3#1", "k1#3"]);
        let k1: Vec<u32> = seen.lock().unwrap().iter().filter(|(k, _)| k == "k1").map(|(_, n)| *n).collect();
        assert_eq!(k1, [1, 2, 3]);
    }

    #[tokio::test]
    async fn compare_and_set_rounds_back_off_a_little_and_randomly() {
        let start = std::time::Instant::now();
        cas_backoff(0).await;
        assert!(start.elapsed() < Duration::from_millis(5), "the first round does not wait");
        for _ in 0..5 {
            let start = std::time::Instant::now();
            cas_backoff(30).await;
            // At most 64 ms (plus the timer's slack).
            assert!(start.elapsed() < Duration::from_millis(150), "{:?}", start.elapsed());
        }
    }

    #[tokio::test]
    async fn an_error_ends_the_call() {
        let items = ["a", "b"];
        let result =
            each(&items, |s| async move { if *s == "b" { Err(ScyllaError::Internal("boom")) } else { Ok(1) } }).await;
        assert!(matches!(result, Err(ScyllaError::Internal("boom"))));
    }
}
