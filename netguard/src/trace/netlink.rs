//! The rtnetlink backend: RTNLGRP_LINK in the host netns and every netns it can find.

use crate::netns::Resolver;
use crate::trace::{Running, TraceOptions};

/// Starts listening; `Err` is the reason in plain words.
pub async fn start(_options: &TraceOptions, _resolver: Resolver) -> Result<Running, String> {
    Err("not built yet".to_string())
}
