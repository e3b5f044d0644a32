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

pub struct AuthShared {
    enabled: AtomicBool,
    store: RwLock<Arc<AuthStore>>,
    tokens: Mutex<HashMap<String, Token>>,
    token_ttl: Duration,
    /// `--auth-token jwt,...`: signed tokens instead of simple ones.
    jwt: Option<JwtKeys>,
}

/// `--auth-token jwt,sign-method=...,pub-key=...,priv-key=...,ttl=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    pub sign_method: String,
    pub pub_key: Option<std::path::PathBuf>,
    pub priv_key: Option<std::path::PathBuf>,
    pub ttl: Duration,
}

/// etcd's default JWT lifetime.
pub const JWT_TTL_DEFAULT: Duration = Duration::from_secs(300);

/// The keys JWT tokens are signed and checked with (etcd's tokenJWT).
pub struct JwtKeys {
    algorithm: jsonwebtoken::Algorithm,
    /// None: verify-only (no private key given).
    signing: Option<jsonwebtoken::EncodingKey>,
    checking: jsonwebtoken::DecodingKey,
    ttl: Duration,
}

/// A JWT's claims, as etcd writes them.
#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl JwtKeys {
    /// Reads the key files `settings` names; errors are etcd's start-up
    /// refusals (with the reason).
    pub fn load(settings: &JwtSettings) -> Result<JwtKeys, String> {
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
        let invalid = |why: String| format!("--auth-token jwt: {why} (auth: invalid auth options)");
        let algorithm: Algorithm = settings.sign_method.parse().map_err(|_| {
            invalid(format!(
                "sign-method {:?} is not one of HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA",
                settings.sign_method
            ))
        })?;
        let read = |p: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, String> {
            p.as_ref()
                .map(|p| std::fs::read(p).map_err(|e| invalid(format!("{}: {e}", p.display()))))
                .transpose()
        };
        let (public, private) = (read(&settings.pub_key)?, read(&settings.priv_key)?);
        let key_err = |e: jsonwebtoken::errors::Error| invalid(format!("reading a key: {e}"));
        let (signing, checking) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = private
                    .ok_or_else(|| invalid("priv-key is needed (auth: missing key data)".into()))?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            _ => {
                let public = public.ok_or_else(|| {
                    invalid("pub-key is needed to check tokens (auth: missing key data)".into())
                })?;
                type Parse<K> = fn(&[u8]) -> jsonwebtoken::errors::Result<K>;
                let (sign, check): (Parse<EncodingKey>, Parse<DecodingKey>) = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => {
                        (EncodingKey::from_ec_pem, DecodingKey::from_ec_pem)
                    }
                    Algorithm::EdDSA => (EncodingKey::from_ed_pem, DecodingKey::from_ed_pem),
                    _ => (EncodingKey::from_rsa_pem, DecodingKey::from_rsa_pem),
                };
                let signing = private.map(|k| sign(&k)).transpose().map_err(key_err)?;
                (signing, check(&public).map_err(key_err)?)
            }
        };
        Ok(JwtKeys {
            algorithm,
            signing,
            checking,
            ttl: settings.ttl,
        })
    }

    /// A token for `user` at auth revision `revision`.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let Some(key) = &self.signing else {
            return Err("auth: token signing attempted with verify-only key".into());
        };
        let exp = (std::time::SystemTime::now() + self.ttl)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.algorithm), &claims, key)
            .map_err(|e| format!("signing a token: {e}"))
    }

    /// The user and auth revision a valid, unexpired token of ours names.
    pub fn check(&self, token: &str) -> Option<Caller> {
        let mut validation = jsonwebtoken::Validation::new(self.algorithm);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.checking, &validation).ok()?;
        Some(Caller {
            user: data.claims.username,
            revision: data.claims.revision,
        })
    }
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
    pub fn new(token_ttl: Duration, jwt: Option<JwtKeys>) -> AuthShared {
        AuthShared {
            enabled: AtomicBool::new(false),
            store: RwLock::new(Arc::default()),
            tokens: Mutex::default(),
            token_ttl,
            jwt,
        }
    }

    /// The JWT keys, when tokens are JWTs.
    pub fn jwt(&self) -> Option<&JwtKeys> {
        self.jwt.as_ref()
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

    /// Gives `user` the token `token` (from an applied Authenticate; with
    /// JWTs the member that took the request signs one instead).
    pub fn assign(&self, token: String, user: String) {
        if self.jwt.is_some() {
            return;
        }
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
        let shared = AuthShared::new(Duration::from_millis(50), None);
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
