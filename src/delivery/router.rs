//! Which upstreams a message may go to, in which order: a matching `[[routes]]` entry
//! names them, otherwise the whole priority list. An upstream that refused a connection
//! a moment ago is tried after the others, but still tried: when all are down, the
//! message is deferred, not dropped.

use super::upstream::Upstream;
use crate::config::{Config, RouteConfig};
use crate::spool::Envelope;
use std::sync::Arc;

#[derive(Debug)]
pub struct Router {
    /// Priority order, as configured.
    upstreams: Vec<Arc<Upstream>>,
    routes: Vec<RouteConfig>,
}

impl Router {
    /// Builds the upstreams of the config; None when there are none (outbox mode).
    pub fn from_config(config: &Config) -> Result<Option<Router>, String> {
        let list = config.upstream_list();
        if list.is_empty() {
            return Ok(None);
        }
        let upstreams = list
            .iter()
            .map(|u| Upstream::new(u, &config.hostname))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Router {
            upstreams,
            routes: config.routes.clone(),
        }))
    }

    pub fn describe(&self) -> String {
        let names: Vec<String> = self.upstreams.iter().map(|u| u.describe()).collect();
        names.join(", ")
    }

    /// The upstreams to try for this message, in order.
    pub fn candidates(&self, envelope: &Envelope) -> Vec<Arc<Upstream>> {
        let route = self.routes.iter().find(|r| {
            r.from_domains.contains(&envelope.from_domain)
                || r.client_networks
                    .iter()
                    .any(|n| n.contains(&envelope.client))
        });
        let mut chosen: Vec<Arc<Upstream>> = match route {
            Some(route) => route
                .upstreams
                .iter()
                .filter_map(|name| self.upstreams.iter().find(|u| u.name() == name).cloned())
                .collect(),
            None => self.upstreams.clone(),
        };
        // Stable: keeps priority order among the up ones and among the down ones.
        chosen.sort_by_key(|u| u.is_down());
        chosen
    }
}
