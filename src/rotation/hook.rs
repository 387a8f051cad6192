//! The publish hook: an operator's executable that publishes or revokes a DNS record
//! (through their DNS provider's API), run like certbot's manual hooks with the record in
//! environment variables. It must exit 0 on success; anything else is retried later.

use crate::keys::{Algorithm, DnsRecord};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    Publish,
    Revoke,
}

impl HookAction {
    fn name(self) -> &'static str {
        match self {
            HookAction::Publish => "publish",
            HookAction::Revoke => "revoke",
        }
    }
}

const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the hook; Err carries what to log (exit status and the first line of stderr).
pub async fn run_hook(
    hook: &Path,
    action: HookAction,
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    record: &DnsRecord,
) -> Result<(), String> {
    let mut command = tokio::process::Command::new(hook);
    command
        .env("DKIM_RELAY_ACTION", action.name())
        .env("DKIM_RELAY_DOMAIN", domain)
        .env("DKIM_RELAY_SELECTOR", selector)
        .env("DKIM_RELAY_ALGORITHM", algorithm.dns_k())
        .env("DKIM_RELAY_RECORD_NAME", &record.name)
        .env("DKIM_RELAY_RECORD_VALUE", &record.value)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(HOOK_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            format!(
                "{} did not finish within {}s",
                hook.display(),
                HOOK_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot run {}: {e}", hook.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!(
        "{} exited with {}: {}",
        hook.display(),
        output.status,
        stderr
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>()
    ))
}
