//! One module per subcommand.

pub mod action;
pub mod apply;
pub mod destroy;
pub mod get;
pub mod history;
pub mod images;
pub mod invariants;
pub mod list;
pub mod lock;
pub mod logs;
pub mod outputs;
pub mod plan;
pub mod plugins;
pub mod pull;
pub mod report;
pub mod runs;
pub mod validate;
pub mod verify;
pub mod watch;
