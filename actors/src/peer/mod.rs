//! The peer transport: members talk over TCP (or TLS over it, for
//! `https://` peer URLs: [`stream`]) on `--listen-peer-urls`, in frames
//! carrying rkyv messages ([`wire`]). [`conn`] dials (pooled, with
//! backoff), [`server`] accepts; both run on the raft core.

pub mod conn;
pub mod server;
pub mod stream;
pub mod wire;
