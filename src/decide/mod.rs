//! From signal results to a verdict, and from a verdict to what to do:
//! pure, no client, no clock, no writes.

pub mod decision;
pub mod judge;
