//! The first screen after `serve` starts: a few lines a person reads to know what the relay
//! is doing (where it listens, what it signs with which selectors, where mail goes) and
//! what to do next (print the DNS records, send a test message). Details are at debug.

use super::RelayHandle;
use std::path::Path;

impl RelayHandle {
    /// Logs the start summary. `config_path` is the `--config` file, if any, so the
    /// commands it suggests read the same config.
    pub fn log_summary(&self, config_path: Option<&Path>) {
        let config = self.reloader.live.current();
        let with_config = config_path
            .map(|p| format!(" --config {}", p.display()))
            .unwrap_or_default();
        for (domain, keys) in self.reloader.keys.current().summary() {
            match keys {
                Ok(selectors) => {
                    tracing::info!(domain = %domain, selectors = %selectors.join(", "), "signing")
                }
                Err(reason) => {
                    tracing::warn!(domain = %domain, reason = %reason, "NOT signing yet: mail for this domain waits in the queue")
                }
            }
        }
        let upstreams = config.upstream_list();
        if upstreams.is_empty() {
            tracing::warn!(outbox = %config.delivery.outbox_dir.display(), "NO UPSTREAM CONFIGURED: signed messages are written to the outbox directory and NOT sent anywhere");
        } else {
            let names: Vec<String> = upstreams
                .iter()
                .map(|u| format!("{}:{}", u.host, u.port))
                .collect();
            tracing::info!(upstreams = %names.join(", "), "mail goes to the upstreams, in this order");
        }
        tracing::info!(
            command = %format!("dkim-relay{with_config} keys dns"),
            "the DNS records that verify the signatures"
        );
        // A relay listening on every interface is reached on loopback from its own host.
        let mut addr = self.smtp_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let from = config
            .domains
            .first()
            .map_or("example.com", |d| d.name.as_str());
        tracing::info!(
            command = %format!(
                "swaks --server {addr} --from someone@{from} --to you@example.net"
            ),
            "send a test message"
        );
    }
}
