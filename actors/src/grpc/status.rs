//! gRPC status codes and the exact error strings etcd sends. Clients match
//! on these strings, so they are copied byte for byte.

use keel_storage::auth::AuthError;
use keel_storage::mvcc::MvccError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code with this number (Unknown for numbers gRPC does not define).
    pub fn from_u8(n: u8) -> Code {
        const ALL: [Code; 17] = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        ALL.get(n as usize).copied().unwrap_or(Code::Unknown)
    }

    /// The label used by `grpc_server_handled_total`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "Canceled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    pub fn empty_key() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: key is not provided")
    }
    pub fn key_not_found() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: key not found")
    }
    pub fn value_provided() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: value is provided")
    }
    pub fn lease_provided() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: lease is provided")
    }
    pub fn too_many_ops() -> Status {
        Status::new(
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        )
    }
    pub fn duplicate_key() -> Status {
        Status::new(
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        )
    }
    pub fn invalid_sort_option() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: invalid sort option")
    }
    pub fn request_too_large() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: request is too large")
    }
    pub fn compacted() -> Status {
        Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        )
    }
    pub fn future_rev() -> Status {
        Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        )
    }
    pub fn lease_not_found() -> Status {
        Status::new(Code::NotFound, "etcdserver: requested lease not found")
    }
    pub fn lease_exists() -> Status {
        Status::new(Code::FailedPrecondition, "etcdserver: lease already exists")
    }
    pub fn lease_ttl_too_large() -> Status {
        Status::new(Code::OutOfRange, "etcdserver: too large lease TTL")
    }
    pub fn no_leader() -> Status {
        Status::new(Code::Unavailable, "etcdserver: no leader")
    }
    pub fn timeout() -> Status {
        Status::new(Code::Unavailable, "etcdserver: request timed out")
    }
    pub fn leader_changed() -> Status {
        Status::new(Code::Unavailable, "etcdserver: leader changed")
    }
    pub fn learner_unsupported() -> Status {
        Status::new(
            Code::Unavailable,
            "etcdserver: rpc not supported for learner",
        )
    }
    pub fn stopped() -> Status {
        Status::new(Code::Unavailable, "etcdserver: server stopped")
    }
    pub fn no_space() -> Status {
        Status::new(
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        )
    }
    pub fn too_many_requests() -> Status {
        Status::new(Code::ResourceExhausted, "etcdserver: too many requests")
    }

    /// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec).
    pub fn encoded_message(&self) -> String {
        let mut out = String::with_capacity(self.message.len());
        for b in self.message.bytes() {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

impl From<MvccError> for Status {
    fn from(e: MvccError) -> Status {
        match e {
            MvccError::Compacted => Status::compacted(),
            MvccError::FutureRev => Status::future_rev(),
            MvccError::KeyNotFound => Status::key_not_found(),
            MvccError::LeaseNotFound => Status::lease_not_found(),
            MvccError::LeaseExists => Status::lease_exists(),
            MvccError::NoSpace => Status::no_space(),
            MvccError::Corrupt => Status::new(Code::DataLoss, "etcdserver: corrupt cluster"),
            MvccError::Auth(a) => a.into(),
        }
    }
}

/// etcd's gRPC errors for auth (rpctypes); an auth error etcd has no gRPC
/// error for goes as Unknown with its own text, as etcd's togRPCError does.
impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        use Code::{FailedPrecondition, InvalidArgument};
        let (code, message) = match e {
            AuthError::RootUserNotExist => (FailedPrecondition, "root user does not exist"),
            AuthError::RootRoleNotExist => {
                (FailedPrecondition, "root user does not have root role")
            }
            AuthError::UserAlreadyExist => (FailedPrecondition, "user name already exists"),
            AuthError::UserEmpty => (InvalidArgument, "user name is empty"),
            AuthError::UserNotFound => (FailedPrecondition, "user name not found"),
            AuthError::RoleAlreadyExist => (FailedPrecondition, "role name already exists"),
            AuthError::RoleNotFound => (FailedPrecondition, "role name not found"),
            AuthError::RoleEmpty => (InvalidArgument, "role name is empty"),
            AuthError::AuthFailed => (
                InvalidArgument,
                "authentication failed, invalid user ID or password",
            ),
            AuthError::PermissionDenied => (Code::PermissionDenied, "permission denied"),
            AuthError::RoleNotGranted => (FailedPrecondition, "role is not granted to the user"),
            AuthError::PermissionNotGranted => {
                (FailedPrecondition, "permission is not granted to the role")
            }
            AuthError::AuthNotEnabled => (FailedPrecondition, "authentication is not enabled"),
            AuthError::InvalidAuthToken => (Code::Unauthenticated, "invalid auth token"),
            AuthError::InvalidAuthMgmt => (InvalidArgument, "invalid auth management"),
            AuthError::AuthOldRevision => (InvalidArgument, "revision of auth store is old"),
            AuthError::PermissionNotGiven => (InvalidArgument, "permission not given"),
            AuthError::NoPasswordUser => return Status::new(Code::Unknown, e.to_string()),
        };
        Status::new(code, format!("etcdserver: {message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_encoding() {
        let s = Status::new(Code::Internal, "a%b\nc é");
        assert_eq!(s.encoded_message(), "a%25b%0Ac %C3%A9");
    }
}
