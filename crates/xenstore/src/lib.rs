//! A Xen-compatible xenstore.
//!
//! This crate owns the store ([`store`]: tree, permissions, transactions, watches,
//! domains, quotas), the wire codec ([`wire`]) and path and permission rules
//! ([`path`], [`perms`]); the `xenstored` binary ([`server`]) serves it on Unix
//! sockets, holding its pid file with a lock ([`pidfile`]) and keeping the store
//! durable in a snapshot and a write-ahead log ([`persist`]). It must not know about KVM, VMMs or the toolstack's policies; it never
//! trusts a client and never panics on what a client sends.

pub mod client;
pub mod path;
pub mod perms;
pub mod persist;
pub mod pidfile;
pub mod server;
pub mod store;
pub mod wire;

#[cfg(test)]
mod store_tests;
