//! erad: the era runtime manager daemon, as a library.
//!
//! The binary (`src/main.rs`) is a thin shell over [`Daemon`]; a Rust program
//! can run the same daemon in-process (see `examples/embed`).

pub mod artifact;
pub mod beneath;
pub mod config;
pub mod health;
pub mod lifecycle;
pub mod logs;
pub mod machine;
pub mod memory;
pub mod outputs;
pub mod plan;
pub mod plugin;
pub mod prepare;
pub mod server;
pub mod spec;
pub mod store;
pub mod trust;

mod daemon;
pub use daemon::{Daemon, DaemonBuilder, DaemonError, RunningDaemon};
