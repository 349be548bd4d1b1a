//! tally: Twilio delivery status callbacks in, live Operation state out.
pub mod event;
pub mod ingest;
