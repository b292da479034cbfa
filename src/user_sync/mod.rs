//! Logged-in pilots' own killmail history (worker-user-killmails): ESI read on a pilot's behalf.

pub mod history;
mod outlet;

pub use outlet::Outlet;
