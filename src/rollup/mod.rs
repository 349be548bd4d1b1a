//! The pure core: status lattices and one operation's state. No locks, clocks, IO or async:
//! time is an argument, so every rule is a plain test and the lattice laws are property tests.

pub mod compact;
pub mod fallback;
pub mod hashing;
pub mod links;
pub mod operation;
pub mod status;
mod stored;

pub use fallback::Fallback;
pub use operation::{Attempt, AttemptKey, Operation, OperationView, Resource, Stats};
pub use status::{Bucket, OperationStatus, Reads, ResourceStatus};
