//! From signal results to a verdict, from a verdict to what to do, and from
//! a rollback request to a plan: pure functions of what was read, no
//! client, no clock, no writes.

pub mod decision;
pub mod judge;
pub mod plan;
pub mod refusal;
pub mod request;
pub mod words;

#[cfg(test)]
mod decision_props;
