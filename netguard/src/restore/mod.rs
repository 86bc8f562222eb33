//! restorer
pub mod plan;
