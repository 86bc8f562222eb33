//! The vocabulary every layer speaks: addresses and routes, netns locators, NIC identities,
//! link specs and the workloads links belong to. Plain data with no kernel or disk access.

mod addr;
mod link;
mod workload;

pub use addr::*;
pub use link::*;
pub use workload::*;

/// `Display` as the serde kebab-case name.
macro_rules! kebab_display {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // serde's kebab-case name is the one word users see everywhere.
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => f.write_str(&s),
                    _ => write!(f, "{self:?}"),
                }
            }
        }
    };
}

pub(crate) use kebab_display;
