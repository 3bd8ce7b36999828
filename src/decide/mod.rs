//! From signal results to a verdict.

pub mod judge;
