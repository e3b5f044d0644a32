//! The Auth service, and the credentials of every request.
//!
//! As etcd, every auth request goes through raft (reads too, so they are
//! linearizable) and is checked and applied by the MVCC actor
//! (`keel_storage::mvcc::store_auth`). Password hashing and checking
//! (bcrypt, tens of milliseconds) run on the executor's blocking thread,
//! never on a core's turn: the raft log holds hashes only.

use http::HeaderMap;
use keel_proto::command::{AuthCmd, Command};
use keel_proto::etcdserverpb as pb;
use keel_storage::auth::AuthError;
use keel_storage::mvcc::{AuthAnswer, CommandResponse};

use super::kv::{mismatch, propose, propose_applied};
use super::ServerCtx;
use crate::auth::{token_index, token_prefix, Caller};
use crate::grpc::status::{Code, Status};
use crate::mvcc_actor::MvccMsg;

/// The gRPC metadata a token travels in (clientv3), and the header the
/// JSON gateway takes it from.
const TOKEN_KEY: &str = "token";
const GATEWAY_TOKEN_KEY: &str = "authorization";

/// How many times Authenticate retries when the auth store changed while
/// the password was checked (etcd retries until it did not).
const AUTHENTICATE_TRIES: usize = 5;

/// The caller a request's token names, if it carries one; without one, the
/// common name of the connection's client certificate (etcd's CN auth,
/// only with `--client-cert-auth`, which is when certificates are asked
/// for and verified). A token this member does not know may come from an
/// Authenticate it has not applied yet: it waits (up to an election
/// timeout) for that entry first.
pub async fn caller(ctx: &ServerCtx, headers: &HeaderMap) -> Result<Option<Caller>, Status> {
    let Some(token) = headers
        .get(TOKEN_KEY)
        .or_else(|| headers.get(GATEWAY_TOKEN_KEY))
    else {
        // Only while auth is on: with it off a certificate's user changes
        // nothing, and requests stay unwrapped (mutual TLS is common
        // without auth: kube-apiserver's).
        if !ctx.auth.enabled() {
            return Ok(None);
        }
        return Ok(ctx.cert_user.as_ref().map(|user| Caller {
            user: user.clone(),
            revision: ctx.auth.store().revision(),
        }));
    };
    let token = token.to_str().map_err(|_| invalid_token())?;
    if let Some(jwt) = ctx.auth.jwt() {
        return jwt.check(token).map(Some).ok_or_else(invalid_token);
    }
    if let Some(c) = known(ctx, token) {
        return Ok(Some(c));
    }
    if let Some(index) = token_index(token) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if ctx
            .mvcc
            .send(MvccMsg::WaitApplied { index, reply: tx })
            .await
            .is_ok()
        {
            let _ = glommio::timer::timeout(ctx.cfg.election_timeout, async {
                let _ = rx.await;
                Ok(())
            })
            .await;
        }
        if let Some(c) = known(ctx, token) {
            return Ok(Some(c));
        }
    }
    Err(invalid_token())
}

fn known(ctx: &ServerCtx, token: &str) -> Option<Caller> {
    let user = ctx.auth.user_of(token)?;
    Some(Caller {
        user,
        revision: ctx.auth.store().revision(),
    })
}

fn invalid_token() -> Status {
    AuthError::InvalidAuthToken.into()
}

/// Proposes an auth request and waits for its answer.
async fn apply(
    ctx: &ServerCtx,
    cmd: AuthCmd,
) -> Result<(Option<pb::ResponseHeader>, AuthAnswer), Status> {
    match propose(ctx, Command::Auth(cmd), 0).await? {
        CommandResponse::Auth { header, answer } => Ok((header, answer)),
        _ => Err(mismatch()),
    }
}

/// Applies an auth request that answers nothing but its header.
async fn apply_done(ctx: &ServerCtx, cmd: AuthCmd) -> Result<Option<pb::ResponseHeader>, Status> {
    Ok(apply(ctx, cmd).await?.0)
}

async fn apply_names(
    ctx: &ServerCtx,
    cmd: AuthCmd,
) -> Result<(Option<pb::ResponseHeader>, Vec<String>), Status> {
    match apply(ctx, cmd).await? {
        (header, AuthAnswer::Names(names)) => Ok((header, names)),
        _ => Err(mismatch()),
    }
}

/// Runs bcrypt on the blocking thread.
async fn off_core<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor().spawn_blocking(f).await
}

async fn hash_password(ctx: &ServerCtx, password: String) -> Result<String, Status> {
    let cost = ctx.cfg.bcrypt_cost;
    off_core(move || {
        bcrypt::hash_with_result(password, cost)
            .map(|h| h.format_for_version(bcrypt::Version::TwoA))
    })
    .await
    .map_err(|e| Status::new(Code::Internal, format!("hashing the password: {e}")))
}

pub async fn auth_enable(
    ctx: &ServerCtx,
    _req: pb::AuthEnableRequest,
) -> Result<pb::AuthEnableResponse, Status> {
    let header = apply_done(ctx, AuthCmd::Enable).await?;
    Ok(pb::AuthEnableResponse { header })
}

pub async fn auth_disable(
    ctx: &ServerCtx,
    _req: pb::AuthDisableRequest,
) -> Result<pb::AuthDisableResponse, Status> {
    let header = apply_done(ctx, AuthCmd::Disable).await?;
    Ok(pb::AuthDisableResponse { header })
}

pub async fn auth_status(
    ctx: &ServerCtx,
    _req: pb::AuthStatusRequest,
) -> Result<pb::AuthStatusResponse, Status> {
    let raft = super::maintenance::ask_raft(ctx).await?;
    let mvcc = super::maintenance::ask_mvcc(ctx).await?;
    let store = ctx.auth.store();
    Ok(pb::AuthStatusResponse {
        header: super::maintenance::header(ctx, &raft, &mvcc),
        enabled: store.enabled(),
        auth_revision: store.revision(),
    })
}

/// etcd's Authenticate: after a read-index round (so the password checked
/// is the newest), the password is checked here, then every member gives
/// the user the same token as it applies the request.
pub async fn authenticate(
    ctx: &ServerCtx,
    req: pb::AuthenticateRequest,
) -> Result<pb::AuthenticateResponse, Status> {
    super::cluster::caught_up(ctx).await?;
    for _ in 0..AUTHENTICATE_TRIES {
        let store = ctx.auth.store();
        let (hash, checked_at) = match store.password_of(&req.name) {
            Ok((hash, rev)) => (hash.to_string(), rev),
            Err(e) => {
                if e != AuthError::AuthNotEnabled {
                    tracing::warn!(user = %req.name, "invalid authentication was requested: {e}");
                }
                return Err(e.into());
            }
        };
        let password = req.password.clone();
        let matches = off_core(move || bcrypt::verify(password, &hash).unwrap_or(false)).await;
        if !matches {
            tracing::info!(user = %req.name, "invalid password");
            return Err(AuthError::AuthFailed.into());
        }
        // JWTs are signed here; simple tokens are assigned by every
        // member as it applies the request.
        let prefix = if ctx.auth.jwt().is_some() {
            String::new()
        } else {
            token_prefix()
        };
        let cmd = AuthCmd::Authenticate {
            name: req.name.clone(),
            token_prefix: prefix.clone(),
        };
        let applied = propose_applied(ctx, Command::Auth(cmd), 0).await?;
        let CommandResponse::Auth { header, .. } = applied.outcome? else {
            return Err(mismatch());
        };
        if checked_at == ctx.auth.store().revision() {
            let token = match ctx.auth.jwt() {
                Some(jwt) => jwt
                    .sign(&req.name, checked_at)
                    .map_err(|e| Status::new(Code::Unknown, e))?,
                None => format!("{prefix}.{}", applied.index),
            };
            return Ok(pb::AuthenticateResponse { header, token });
        }
    }
    Err(AuthError::AuthOldRevision.into())
}

pub async fn user_add(
    ctx: &ServerCtx,
    req: pb::AuthUserAddRequest,
) -> Result<pb::AuthUserAddResponse, Status> {
    let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
    let password_hash = if no_password {
        None
    } else if !req.hashed_password.is_empty() {
        Some(req.hashed_password)
    } else if req.name.is_empty() {
        // Refused when applied; no need to hash for it.
        None
    } else {
        Some(hash_password(ctx, req.password).await?)
    };
    let header = apply_done(
        ctx,
        AuthCmd::UserAdd {
            name: req.name,
            password_hash,
        },
    )
    .await?;
    Ok(pb::AuthUserAddResponse { header })
}

pub async fn user_get(
    ctx: &ServerCtx,
    req: pb::AuthUserGetRequest,
) -> Result<pb::AuthUserGetResponse, Status> {
    let (header, roles) = apply_names(ctx, AuthCmd::UserGet { name: req.name }).await?;
    Ok(pb::AuthUserGetResponse { header, roles })
}

pub async fn user_list(
    ctx: &ServerCtx,
    _req: pb::AuthUserListRequest,
) -> Result<pb::AuthUserListResponse, Status> {
    let (header, users) = apply_names(ctx, AuthCmd::UserList).await?;
    Ok(pb::AuthUserListResponse { header, users })
}

pub async fn user_delete(
    ctx: &ServerCtx,
    req: pb::AuthUserDeleteRequest,
) -> Result<pb::AuthUserDeleteResponse, Status> {
    let header = apply_done(ctx, AuthCmd::UserDelete { name: req.name }).await?;
    Ok(pb::AuthUserDeleteResponse { header })
}

pub async fn user_change_password(
    ctx: &ServerCtx,
    req: pb::AuthUserChangePasswordRequest,
) -> Result<pb::AuthUserChangePasswordResponse, Status> {
    let password_hash = if req.hashed_password.is_empty() {
        hash_password(ctx, req.password).await?
    } else {
        req.hashed_password
    };
    let cmd = AuthCmd::UserChangePassword {
        name: req.name,
        password_hash,
    };
    let header = apply_done(ctx, cmd).await?;
    Ok(pb::AuthUserChangePasswordResponse { header })
}

pub async fn user_grant_role(
    ctx: &ServerCtx,
    req: pb::AuthUserGrantRoleRequest,
) -> Result<pb::AuthUserGrantRoleResponse, Status> {
    let cmd = AuthCmd::UserGrantRole {
        user: req.user,
        role: req.role,
    };
    let header = apply_done(ctx, cmd).await?;
    Ok(pb::AuthUserGrantRoleResponse { header })
}

pub async fn user_revoke_role(
    ctx: &ServerCtx,
    req: pb::AuthUserRevokeRoleRequest,
) -> Result<pb::AuthUserRevokeRoleResponse, Status> {
    let cmd = AuthCmd::UserRevokeRole {
        name: req.name,
        role: req.role,
    };
    let header = apply_done(ctx, cmd).await?;
    Ok(pb::AuthUserRevokeRoleResponse { header })
}

pub async fn role_add(
    ctx: &ServerCtx,
    req: pb::AuthRoleAddRequest,
) -> Result<pb::AuthRoleAddResponse, Status> {
    let header = apply_done(ctx, AuthCmd::RoleAdd { name: req.name }).await?;
    Ok(pb::AuthRoleAddResponse { header })
}

pub async fn role_get(
    ctx: &ServerCtx,
    req: pb::AuthRoleGetRequest,
) -> Result<pb::AuthRoleGetResponse, Status> {
    match apply(ctx, AuthCmd::RoleGet { role: req.role }).await? {
        (header, AuthAnswer::Perms(perm)) => Ok(pb::AuthRoleGetResponse { header, perm }),
        _ => Err(mismatch()),
    }
}

pub async fn role_list(
    ctx: &ServerCtx,
    _req: pb::AuthRoleListRequest,
) -> Result<pb::AuthRoleListResponse, Status> {
    let (header, roles) = apply_names(ctx, AuthCmd::RoleList).await?;
    Ok(pb::AuthRoleListResponse { header, roles })
}

pub async fn role_delete(
    ctx: &ServerCtx,
    req: pb::AuthRoleDeleteRequest,
) -> Result<pb::AuthRoleDeleteResponse, Status> {
    let header = apply_done(ctx, AuthCmd::RoleDelete { role: req.role }).await?;
    Ok(pb::AuthRoleDeleteResponse { header })
}

pub async fn role_grant_permission(
    ctx: &ServerCtx,
    req: pb::AuthRoleGrantPermissionRequest,
) -> Result<pb::AuthRoleGrantPermissionResponse, Status> {
    let Some(perm) = req.perm else {
        return Err(AuthError::PermissionNotGiven.into());
    };
    let cmd = AuthCmd::RoleGrantPermission {
        name: req.name,
        perm_type: perm.perm_type,
        key: perm.key.into(),
        range_end: perm.range_end.into(),
    };
    let header = apply_done(ctx, cmd).await?;
    Ok(pb::AuthRoleGrantPermissionResponse { header })
}

pub async fn role_revoke_permission(
    ctx: &ServerCtx,
    req: pb::AuthRoleRevokePermissionRequest,
) -> Result<pb::AuthRoleRevokePermissionResponse, Status> {
    let cmd = AuthCmd::RoleRevokePermission {
        role: req.role,
        key: req.key.into(),
        range_end: req.range_end.into(),
    };
    let header = apply_done(ctx, cmd).await?;
    Ok(pb::AuthRoleRevokePermissionResponse { header })
}
