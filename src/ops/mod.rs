//! What an operator does to a running broker: reload it, rotate a real credential (and follow a
//! rotation another replica made), read the credentials' inventory, and list, reject and expire
//! held writes. The admin API, `SIGHUP` and the file watcher call these; each step is an audit
//! line. And what runs on its own: rotation deadlines' notices.

pub mod deadlines;
pub mod holds;
mod reload;
mod rotate;
mod status;
mod steps;

pub use reload::{reload, ReloadOutcome};
pub use rotate::{follow, rotate, RotateError, Rotated, Rotation};
pub use status::{status, StatusRow};
