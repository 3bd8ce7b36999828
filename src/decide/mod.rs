//! From signal results to a verdict, and from a request to a plan: pure
//! functions of what was read, no I/O.

pub mod judge;
pub mod plan;
pub mod refusal;
pub mod request;
pub mod words;
