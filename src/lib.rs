//! tally
pub mod event;
pub mod ingest;
pub mod signature;
