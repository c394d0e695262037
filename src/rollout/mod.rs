//! The rollout: plan the waves, ship one build to every rack, promote wave by wave with a
//! bake after each promote, and roll back when a gate fails. Journaled step by step so an
//! interrupted run can be resumed or rolled back, and `status` can tell the truth.

pub mod engine;
pub mod event;
pub mod gates;
pub mod journal;
pub mod lock;
pub mod store;
pub mod summary;

pub use event::{Event, Reporter};
pub use summary::Summary;
