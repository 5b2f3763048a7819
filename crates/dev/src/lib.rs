//! vap-dev: vap on one machine. Throwaway PostgreSQL clusters and brokers ([`devstack`], for
//! tests and the embedded default) and the embedded default itself ([`embedded`]: the real
//! vap binaries as child processes against them, no Docker).

#![deny(unsafe_code)]

pub mod devstack;
pub mod embedded;
