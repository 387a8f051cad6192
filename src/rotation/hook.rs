//! The publish hook: an operator's executable that publishes or revokes a DNS record
//! (through their DNS provider's API), run like certbot's manual hooks with the record in
//! environment variables. It must exit 0 within `rotation.hook_timeout`; anything else is
//! retried later. A hook that overruns is killed with its whole process group, so a
//! `sleep` or `curl` it started cannot outlive it.

use crate::keys::{Algorithm, DnsRecord};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    Publish,
    Revoke,
}

impl HookAction {
    pub fn name(self) -> &'static str {
        match self {
            HookAction::Publish => "publish",
            HookAction::Revoke => "revoke",
        }
    }
}

/// What one run came to: Ok with "exit 0", or Err with what to log and keep (the exit
/// status and the first line of stderr, at most 200 characters; never the environment).
pub async fn run_hook(
    hook: &Path,
    timeout: Duration,
    action: HookAction,
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    record: &DnsRecord,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(hook);
    command
        .env("DKIM_RELAY_ACTION", action.name())
        .env("DKIM_RELAY_DOMAIN", domain)
        .env("DKIM_RELAY_SELECTOR", selector)
        .env("DKIM_RELAY_ALGORITHM", algorithm.dns_k())
        .env("DKIM_RELAY_RECORD_NAME", &record.name)
        .env("DKIM_RELAY_RECORD_VALUE", &record.value)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", hook.display()))?;
    let group = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            if let Some(pid) = group.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on the group this hook leads; no memory is involved.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            Err(format!(
                "timed out after {}s (killed; raise rotation.hook_timeout if it needs longer)",
                timeout.as_secs()
            ))
        }
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", hook.display())),
        Ok(Ok(output)) if output.status.success() => Ok("exit 0".into()),
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let first = stderr
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>();
            let status = match output.status.code() {
                Some(code) => format!("exit {code}"),
                None => "killed by a signal".into(),
            };
            Err(if first.is_empty() {
                status
            } else {
                format!("{status}: {first}")
            })
        }
    }
}
