//! Everything that talks to NATS.
//!
//! - `server`: the managed `nats-server` child process `sluice run` starts when
//!   no URL is given (also used by the tests and the benchmark).
//! - `connect`: the client connection, authentication and TLS, sized buffers
//!   and slow-consumer counting.
//! - `streams`: creating or updating the JetStream streams a file declares.
//! - `input`: reading batches from a JetStream consumer or a core queue group.
//! - `publish`: publishing outputs and dead letters, and knowing they arrived.
//! - `state`: sinks' state kept in a key-value bucket across restarts.

pub mod connect;
pub mod input;
pub mod publish;
pub mod server;
pub mod state;
pub mod streams;

pub use connect::{Connection, check_url, connect, connect_with};
pub use server::ManagedServer;
