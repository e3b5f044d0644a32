//! What every core needs of auth: whether it is on, a copy of the applied
//! auth store (for checks made before a request reaches raft: reads,
//! watches, administration), and this member's simple tokens.
//!
//! The MVCC actor owns the auth store (it is raft state, applied with the
//! log) and publishes a copy here after each change; auth changes are rare
//! and the store is small. Tokens are assigned when an Authenticate entry is
//! applied, on every member, so a token works on any member (etcd's simple
//! tokens). A token lives `--auth-token-ttl` after its last use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use keel_storage::auth::{AuthError, AuthInfo, AuthStore};

/// etcd's default `--auth-token-ttl`.
pub const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(300);

/// Letters of a simple token's random part (etcd's).
const TOKEN_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const TOKEN_PREFIX_LEN: usize = 16;

#[derive(Debug)]
pub struct AuthShared {
    enabled: AtomicBool,
    store: RwLock<Arc<AuthStore>>,
    tokens: Mutex<HashMap<String, Token>>,
    token_ttl: Duration,
}

#[derive(Debug)]
struct Token {
    user: String,
    expires: Instant,
}

/// Who sent a request, once its token (or certificate) was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    /// The auth revision when the credentials were resolved.
    pub revision: u64,
}

impl Caller {
    pub fn info(&self) -> AuthInfo<'_> {
        AuthInfo {
            user: &self.user,
            revision: self.revision,
        }
    }
}

/// The credentials of a request that may have none.
pub fn info_of(caller: Option<&Caller>) -> AuthInfo<'_> {
    caller.map_or(AuthInfo::NONE, Caller::info)
}

impl AuthShared {
    pub fn new(token_ttl: Duration) -> AuthShared {
        AuthShared {
            enabled: AtomicBool::new(false),
            store: RwLock::new(Arc::default()),
            tokens: Mutex::default(),
            token_ttl,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The applied auth store, as of the last change.
    pub fn store(&self) -> Arc<AuthStore> {
        self.store.read().expect("auth store lock").clone()
    }

    /// Publishes the applied auth store; turning auth off drops every token.
    pub fn publish(&self, store: &AuthStore) {
        *self.store.write().expect("auth store lock") = Arc::new(store.clone());
        self.enabled.store(store.enabled(), Ordering::Release);
        if !store.enabled() {
            self.tokens.lock().expect("token lock").clear();
        }
    }

    /// Gives `user` the token `token` (from an applied Authenticate).
    pub fn assign(&self, token: String, user: String) {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().expect("token lock");
        // Expired tokens go when new ones come: the table holds at most
        // what one TTL of Authenticate requests made.
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(
            token,
            Token {
                user,
                expires: now + self.token_ttl,
            },
        );
    }

    /// Drops `user`'s tokens (deleted, or its password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.tokens
            .lock()
            .expect("token lock")
            .retain(|_, t| t.user != user);
    }

    /// The user a live token names; using it extends its life.
    pub fn user_of(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().expect("token lock");
        let t = tokens.get_mut(token)?;
        if t.expires <= now {
            tokens.remove(token);
            return None;
        }
        t.expires = now + self.token_ttl;
        Some(t.user.clone())
    }

    /// etcd's IsAdminPermitted against the applied store.
    pub fn check_admin(&self, caller: Option<&Caller>) -> Result<(), AuthError> {
        if !self.enabled() {
            return Ok(());
        }
        self.store().check_admin(info_of(caller))
    }

    /// May `caller` read `[key, range_end)` (or `key`)?
    pub fn check_read(
        &self,
        caller: Option<&Caller>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        if !self.enabled() {
            return Ok(());
        }
        self.store().check_read(info_of(caller), key, range_end)
    }
}

/// A simple token's random part (the raft index of its Authenticate entry
/// follows it, after a dot).
pub fn token_prefix() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..TOKEN_PREFIX_LEN)
        .map(|_| TOKEN_LETTERS[rng.gen_range(0..TOKEN_LETTERS.len())] as char)
        .collect()
}

/// The raft index a simple token was assigned at, if it has that form.
pub fn token_index(token: &str) -> Option<u64> {
    let (_, index) = token.split_once('.')?;
    index.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_live_a_ttl_after_their_last_use() {
        let shared = AuthShared::new(Duration::from_millis(50));
        shared.assign("abc.7".into(), "alice".into());
        assert_eq!(shared.user_of("abc.7").as_deref(), Some("alice"));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(shared.user_of("abc.7").as_deref(), Some("alice"));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            shared.user_of("abc.7").as_deref(),
            Some("alice"),
            "used 30 ms ago"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(shared.user_of("abc.7"), None);
        shared.assign("x.1".into(), "bob".into());
        shared.invalidate_user("bob");
        assert_eq!(shared.user_of("x.1"), None);
    }

    #[test]
    fn token_form() {
        let p = token_prefix();
        assert_eq!(p.len(), 16);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_eq!(token_index(&format!("{p}.42")), Some(42));
        assert_eq!(token_index("nodot"), None);
        assert_eq!(token_index("a.b"), None);
    }
}
