//! `[metrics]`: the HTTP listener for /metrics, /healthz and /readyz.

use super::HumanDuration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP listener, e.g. "127.0.0.1:9325". Absent: no listener.
    pub listen: Option<SocketAddr>,
    /// /readyz turns unready when deliveries are being deferred and none has succeeded
    /// for this long.
    pub upstream_within: HumanDuration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            upstream_within: HumanDuration(Duration::from_secs(3600)),
        }
    }
}
