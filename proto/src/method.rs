//! The gRPC methods keel answers, by HTTP/2 path.

/// How a method's messages flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Unary,
    ServerStream,
    BidiStream,
}

macro_rules! methods {
    ($($variant:ident => ($service:literal, $name:literal, $kind:ident),)*) => {
        /// Every method of etcd's v3 API plus gRPC health.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Method { $($variant,)* }

        impl Method {
            pub const ALL: &'static [Method] = &[$(Method::$variant,)*];

            /// `"/etcdserverpb.KV/Range"` and so on.
            pub fn from_path(path: &str) -> Option<Method> {
                let (service, name) = path.strip_prefix('/')?.split_once('/')?;
                match (service, name) {
                    $(($service, $name) => Some(Method::$variant),)*
                    _ => None,
                }
            }

            /// The fully qualified service, e.g. `etcdserverpb.KV`.
            pub fn service(self) -> &'static str {
                match self { $(Method::$variant => $service,)* }
            }

            /// The method name, e.g. `Range`.
            pub fn name(self) -> &'static str {
                match self { $(Method::$variant => $name,)* }
            }

            pub fn kind(self) -> MethodKind {
                match self { $(Method::$variant => MethodKind::$kind,)* }
            }
        }
    };
}

methods! {
    Range => ("etcdserverpb.KV", "Range", Unary),
    Put => ("etcdserverpb.KV", "Put", Unary),
    DeleteRange => ("etcdserverpb.KV", "DeleteRange", Unary),
    Txn => ("etcdserverpb.KV", "Txn", Unary),
    Compact => ("etcdserverpb.KV", "Compact", Unary),
    Watch => ("etcdserverpb.Watch", "Watch", BidiStream),
    LeaseGrant => ("etcdserverpb.Lease", "LeaseGrant", Unary),
    LeaseRevoke => ("etcdserverpb.Lease", "LeaseRevoke", Unary),
    LeaseKeepAlive => ("etcdserverpb.Lease", "LeaseKeepAlive", BidiStream),
    LeaseTimeToLive => ("etcdserverpb.Lease", "LeaseTimeToLive", Unary),
    LeaseLeases => ("etcdserverpb.Lease", "LeaseLeases", Unary),
    MemberAdd => ("etcdserverpb.Cluster", "MemberAdd", Unary),
    MemberRemove => ("etcdserverpb.Cluster", "MemberRemove", Unary),
    MemberUpdate => ("etcdserverpb.Cluster", "MemberUpdate", Unary),
    MemberList => ("etcdserverpb.Cluster", "MemberList", Unary),
    MemberPromote => ("etcdserverpb.Cluster", "MemberPromote", Unary),
    Alarm => ("etcdserverpb.Maintenance", "Alarm", Unary),
    Status => ("etcdserverpb.Maintenance", "Status", Unary),
    Defragment => ("etcdserverpb.Maintenance", "Defragment", Unary),
    Hash => ("etcdserverpb.Maintenance", "Hash", Unary),
    HashKv => ("etcdserverpb.Maintenance", "HashKV", Unary),
    Snapshot => ("etcdserverpb.Maintenance", "Snapshot", ServerStream),
    MoveLeader => ("etcdserverpb.Maintenance", "MoveLeader", Unary),
    Downgrade => ("etcdserverpb.Maintenance", "Downgrade", Unary),
    AuthEnable => ("etcdserverpb.Auth", "AuthEnable", Unary),
    AuthDisable => ("etcdserverpb.Auth", "AuthDisable", Unary),
    AuthStatus => ("etcdserverpb.Auth", "AuthStatus", Unary),
    Authenticate => ("etcdserverpb.Auth", "Authenticate", Unary),
    UserAdd => ("etcdserverpb.Auth", "UserAdd", Unary),
    UserGet => ("etcdserverpb.Auth", "UserGet", Unary),
    UserList => ("etcdserverpb.Auth", "UserList", Unary),
    UserDelete => ("etcdserverpb.Auth", "UserDelete", Unary),
    UserChangePassword => ("etcdserverpb.Auth", "UserChangePassword", Unary),
    UserGrantRole => ("etcdserverpb.Auth", "UserGrantRole", Unary),
    UserRevokeRole => ("etcdserverpb.Auth", "UserRevokeRole", Unary),
    RoleAdd => ("etcdserverpb.Auth", "RoleAdd", Unary),
    RoleGet => ("etcdserverpb.Auth", "RoleGet", Unary),
    RoleList => ("etcdserverpb.Auth", "RoleList", Unary),
    RoleDelete => ("etcdserverpb.Auth", "RoleDelete", Unary),
    RoleGrantPermission => ("etcdserverpb.Auth", "RoleGrantPermission", Unary),
    RoleRevokePermission => ("etcdserverpb.Auth", "RoleRevokePermission", Unary),
    Lock => ("v3lockpb.Lock", "Lock", Unary),
    Unlock => ("v3lockpb.Lock", "Unlock", Unary),
    Campaign => ("v3electionpb.Election", "Campaign", Unary),
    Proclaim => ("v3electionpb.Election", "Proclaim", Unary),
    Leader => ("v3electionpb.Election", "Leader", Unary),
    Observe => ("v3electionpb.Election", "Observe", ServerStream),
    Resign => ("v3electionpb.Election", "Resign", Unary),
    HealthCheck => ("grpc.health.v1.Health", "Check", Unary),
    HealthWatch => ("grpc.health.v1.Health", "Watch", ServerStream),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for m in Method::ALL {
            let path = format!("/{}/{}", m.service(), m.name());
            assert_eq!(Method::from_path(&path), Some(*m));
        }
        assert_eq!(Method::from_path("/etcdserverpb.KV/Nope"), None);
        assert_eq!(Method::from_path("garbage"), None);
    }
}
