//! [`ContactStore`] on `users`: every write a compare-and-set on the row's `version`.
//!
//! A write reads the user and its version, decides (a pure function of the stored user), and
//! writes with `INSERT … IF NOT EXISTS` (no user yet) or `UPDATE … IF version = ?`; a write that
//! lost to another starts again from a fresh read. So a dead address recorded by a dispatcher is
//! never lost to a concurrent `PUT` of the user, and "was it new" is exact.
//!
//! `get_users` reads each user with its own single-partition query, concurrently, rather than one
//! `IN` query: each goes straight to a replica (token-aware), while an `IN` makes one coordinator
//! fan out to many replicas and wait for the slowest.

use super::ScyllaError;
use super::state::{CAS_ATTEMPTS, ScyllaState, cas_backoff, each, each_in_key_order};
use super::statements::Stmt;
use super::values::{from_json, to_json};
use async_trait::async_trait;
use herald_schemas::contacts::User;
use herald_schemas::store::{ContactStore, StoreError};

const TABLE: &str = "users";

/// The user as `put_users` stores it: the client's version, keeping the dead addresses the
/// stored one recorded for addresses it still has (an `unreachable` list from the client is
/// ignored, as in the embedded store).
pub fn user_to_put(mut user: User, stored: Option<&User>) -> User {
    user.unreachable.clear();
    if let Some(stored) = stored {
        user.keep_unreachable_from(stored);
    }
    user
}

/// Records `address` as dead if the user has it and it is not dead yet; whether it did.
pub fn mark_dead(user: &mut User, address: &str) -> bool {
    let marked = user.has_address(address) && user.reaches(address);
    if marked {
        user.unreachable.push(address.to_string());
    }
    marked
}

/// What a compare-and-set round ended with.
struct Written {
    /// There was a stored user when the write applied.
    existed: bool,
    /// Something was written (the change asked for a write).
    wrote: bool,
}

impl ScyllaState {
    async fn read_user(&self, user_id: &str) -> Result<Option<(User, i64)>, ScyllaError> {
        match self.select_one::<(Vec<u8>, i64)>(Stmt::UserSelect, (user_id,)).await? {
            Some((data, version)) => Ok(Some((from_json(TABLE, &data)?, version))),
            None => Ok(None),
        }
    }

    /// Reads the user, asks `change` for its new version (`None`: nothing to write), and writes it
    /// if nobody wrote the user meanwhile; otherwise starts again.
    async fn change_user(
        &self,
        user_id: &str,
        change: impl Fn(Option<&User>) -> Option<User>,
    ) -> Result<Written, ScyllaError> {
        for round in 0..CAS_ATTEMPTS {
            cas_backoff(round).await;
            let stored = self.read_user(user_id).await?;
            let Some(next) = change(stored.as_ref().map(|(user, _)| user)) else {
                return Ok(Written { existed: stored.is_some(), wrote: false });
            };
            let data = to_json(TABLE, &next)?;
            let applied = match &stored {
                None => self.lwt(Stmt::UserInsert, (user_id, &data, 1_i64)).await?.applied,
                Some((_, version)) => {
                    self.lwt(Stmt::UserUpdate, (&data, version.saturating_add(1), user_id, *version)).await?.applied
                }
            };
            if applied {
                return Ok(Written { existed: stored.is_some(), wrote: true });
            }
        }
        Err(ScyllaError::Contention { table: TABLE, key: user_id.to_string(), attempts: CAS_ATTEMPTS })
    }
}

#[async_trait]
impl ContactStore for ScyllaState {
    async fn get_users(&self, ids: &[String]) -> Result<Vec<Option<User>>, StoreError> {
        let users = each(ids, |id| async move { Ok(self.read_user(id).await?.map(|(user, _)| user)) }).await?;
        Ok(users)
    }

    /// A user twice in one call is written in order: the second is not new and keeps the dead
    /// addresses as the first left them.
    async fn put_users(&self, users: &[User]) -> Result<Vec<bool>, StoreError> {
        let fresh = each_in_key_order(
            users,
            |user| user.id.as_str(),
            |user| async move {
                let written = self.change_user(&user.id, |stored| Some(user_to_put(user.clone(), stored))).await?;
                Ok(!written.existed)
            },
        )
        .await?;
        Ok(fresh)
    }

    async fn mark_unreachable(&self, user_id: &str, address: &str) -> Result<bool, StoreError> {
        let written = self
            .change_user(user_id, |stored| {
                let mut user = stored?.clone();
                mark_dead(&mut user, address).then_some(user)
            })
            .await?;
        Ok(written.wrote)
    }

    async fn add_opt_out(&self, user_id: &str, category: &str) -> Result<bool, StoreError> {
        let written = self
            .change_user(user_id, |stored| {
                let mut user = stored?.clone();
                user.preferences.opt_out.add_category(category).then_some(user)
            })
            .await?;
        Ok(written.wrote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::contacts::{Device, Platform};

    fn user() -> User {
        User {
            id: "u1".into(),
            email: Some("a@example.com".into()),
            phone: Some("+15550001".into()),
            devices: vec![Device { id: "d1".into(), platform: Platform::Ios, token: "tok".into(), active: true }],
            ..User::default()
        }
    }

    #[test]
    fn a_put_keeps_dead_addresses_it_still_names_and_ignores_the_clients_list() {
        let mut stored = user();
        assert!(mark_dead(&mut stored, "tok"));
        assert!(mark_dead(&mut stored, "a@example.com"));
        assert!(!mark_dead(&mut stored, "tok"), "already dead");
        assert!(!mark_dead(&mut stored, "other"), "not the user's");
        assert_eq!(stored.unreachable, ["tok", "a@example.com"]);

        let again = User { email: Some("new@example.com".into()), unreachable: vec!["+15550001".into()], ..user() };
        let put = user_to_put(again, Some(&stored));
        assert_eq!(put.unreachable, ["tok"]);
        assert!(put.reaches("new@example.com") && put.reaches("+15550001"));

        // A new user starts with every address reachable, whatever the client says.
        let new = user_to_put(User { unreachable: vec!["tok".into()], ..user() }, None);
        assert!(new.unreachable.is_empty());
    }

    #[test]
    fn users_are_stored_as_the_embedded_store_does_json() {
        let mut u = user();
        mark_dead(&mut u, "tok");
        let bytes = to_json(TABLE, &u).unwrap();
        assert_eq!(from_json::<User>(TABLE, &bytes).unwrap(), u);
        assert!(matches!(from_json::<User>(TABLE, b"{"), Err(ScyllaError::Corrupt { table: "users", .. })));
    }
}
