//! Reverse names (PTR) of report sources, looked up only when asked (`dmarc report
//! --resolve`), all at once, each bounded by [`PTR_TIMEOUT`]: a report may list hundreds of
//! addresses whose reverse zones answer slowly or never.

use crate::resolver::Patience;
use mail_auth::hickory_resolver::proto::rr::RData;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The longest one PTR lookup may take.
pub const PTR_TIMEOUT: Duration = Duration::from_secs(2);
/// Sources looked up at most (the ones with most failing mail come first).
pub const MAX_LOOKUPS: usize = 64;

/// The first PTR name of each address that has one, lower case without the final dot.
/// `server` is the resolver from `[rotation] resolver` (else the system's).
pub async fn names(
    server: Option<SocketAddr>,
    ips: &[String],
) -> Result<HashMap<String, String>, String> {
    let resolver = crate::resolver::resolver(
        server,
        Patience {
            timeout: PTR_TIMEOUT,
            attempts: 1,
            cache_size: None,
        },
    )?;
    let resolver = std::sync::Arc::new(resolver);
    let mut tasks = tokio::task::JoinSet::new();
    for ip in ips.iter().take(MAX_LOOKUPS) {
        let Ok(addr) = ip.parse::<IpAddr>() else {
            continue;
        };
        let resolver = resolver.clone();
        let ip = ip.clone();
        tasks.spawn(async move {
            let lookup =
                tokio::time::timeout(PTR_TIMEOUT, resolver.resolver().reverse_lookup(addr)).await;
            let name = match lookup {
                Ok(Ok(found)) => found.answers().iter().find_map(|r| match &r.data {
                    RData::PTR(ptr) => Some(crate::domain::normalise(&ptr.to_ascii())),
                    _ => None,
                }),
                _ => None,
            };
            (ip, name)
        });
    }
    let mut out = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((ip, Some(name))) = done {
            out.insert(ip, name);
        }
    }
    Ok(out)
}
