//! gRPC over HTTP/2, written for keel's reactors: status codes and etcd's
//! error strings ([`status`]), message framing ([`frame`]), response bodies
//! ([`body`]) and the glommio socket adapter for hyper ([`io`]).

pub mod body;
pub mod frame;
pub mod io;
pub mod status;
pub mod timer;
