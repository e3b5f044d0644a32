//! The peer transport: members talk over TCP on `--listen-peer-urls`, in
//! frames carrying rkyv messages ([`wire`]). [`conn`] dials (pooled, with
//! backoff), [`server`] accepts; both run on the raft core.

pub mod conn;
pub mod server;
pub mod wire;
