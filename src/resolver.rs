//! The one way the relay builds a DNS resolver: the server named in config (tests point
//! it at one on 127.0.0.1), over UDP and TCP on its port, or the system's.

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::MessageAuthenticator;
use std::net::SocketAddr;
use std::time::Duration;

/// How patient a resolver on a named server is. The system's keeps its own settings.
pub struct Patience {
    pub timeout: Duration,
    pub attempts: usize,
    /// Answers kept for their TTL: 0 where a change must be seen at once.
    pub cache_size: Option<u64>,
}

/// A resolver for `server`, or the system's when there is none.
pub fn resolver(
    server: Option<SocketAddr>,
    patience: Patience,
) -> Result<MessageAuthenticator, String> {
    match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in ns.connections.iter_mut() {
                connection.port = addr.port();
            }
            let mut opts = ResolverOpts::default();
            opts.timeout = patience.timeout;
            opts.attempts = patience.attempts;
            if let Some(size) = patience.cache_size {
                opts.cache_size = size;
            }
            MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![ns]), opts)
        }
        None => MessageAuthenticator::new_system_conf(),
    }
    .map_err(|e| format!("DNS resolver: {e}"))
}
