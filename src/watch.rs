//! Hot reload: the running relay notices changes to the key store and its config file and
//! applies them without a restart. Directories are watched (editors and Kubernetes mounts
//! replace files rather than edit them), and a periodic re-check covers filesystems where
//! events do not arrive.

use crate::config::Config;
use notify::RecursiveMode;
use notify_debouncer_full::new_debouncer;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// How often files are compared even without events.
pub const RECHECK_EVERY: Duration = Duration::from_secs(60);

/// Starts watching the key store (with its domain folders) and the config file's folder
/// (only its own entries: a spool kept beside the config must not count as a change). A
/// message arrives on the returned channel after each burst of changes; the returned guard
/// stops watching when dropped. Also returns a sender of the same wake-ups, for a reload
/// asked by signal.
///
/// In the config folder only the config file itself counts (and Kubernetes' `..data`
/// swaps): the relay's own log kept beside it would otherwise wake a reload with every
/// line, and a broken config logs a line at every reload, for ever.
pub fn watch(
    key_store: &Path,
    config_file: Option<&Path>,
) -> Result<
    (
        impl Send,
        mpsc::UnboundedSender<()>,
        mpsc::UnboundedReceiver<()>,
    ),
    String,
> {
    let config_dir = config_file.map(|file| match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    });
    let config_name = config_file
        .and_then(|f| f.file_name())
        .map(|n| n.to_owned());
    let dir = config_dir.clone();
    // Whether a path is another entry of the config folder (a log, a backup, a spool).
    let beside_config = move |path: &Path| {
        dir.as_deref().is_some_and(|d| path.parent() == Some(d))
            && path.file_name().is_some_and(|name| {
                Some(name) != config_name.as_deref() && !name.to_string_lossy().starts_with("..")
            })
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let wake = tx.clone();
    let mut debouncer = new_debouncer(
        Duration::from_millis(300),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            // Opening and reading are not changes, and the reload itself reads every file
            // it watches: counting those would wake it again, for ever.
            let changed = result.is_ok_and(|events| {
                events.iter().any(|e| {
                    !matches!(e.event.kind, notify::EventKind::Access(_))
                        && !e.event.paths.iter().all(|p| beside_config(p))
                })
            });
            if changed {
                let _ = tx.send(());
            }
        },
    )
    .map_err(|e| format!("file watcher: {e}"))?;
    let mut targets = vec![(key_store, RecursiveMode::Recursive)];
    targets.extend(
        config_dir
            .as_deref()
            .map(|d| (d, RecursiveMode::NonRecursive)),
    );
    for (dir, mode) in targets {
        debouncer
            .watch(dir, mode)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    }
    Ok((debouncer, wake, rx))
}

/// A cheap summary of the key store (names, sizes, modification times, modes), to tell
/// whether anything changed since the last look. The mode is in it because a `chmod` does
/// not change the modification time: a key made group-readable must stop signing at once,
/// and one fixed back to 0600 must sign again, without a restart.
pub fn store_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                out.push((
                    path,
                    meta.len(),
                    meta.modified().ok(),
                    meta.permissions().mode(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Re-reads the config file. `Ok(None)` when its text has not changed.
pub fn reread_config(path: &Path, last_text: &mut String) -> Result<Option<Config>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text == *last_text {
        return Ok(None);
    }
    let config = Config::from_file_text(path, &text).map_err(|e| e.to_string())?;
    *last_text = text;
    Ok(Some(config))
}

/// What a config reload changed, by how each change takes effect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadEffect {
    /// Applied now. The SMTP side reads each new connection's rules from the snapshot the
    /// listener takes at accept; delivery reads the retry schedule and the relay's name at
    /// each attempt; key loading and rotation read the config at each run; the delivery
    /// router is built anew (see `rebuild_router`).
    pub live: Vec<&'static str>,
    /// Sized or bound once at start (the listeners, connection limits, TLS and AUTH, the
    /// spool, the delivery workers, the metrics listener): kept as they were until a
    /// restart, and logged by name.
    pub restart: Vec<&'static str>,
    /// The router (upstreams, routes, and the name the relay gives in EHLO) must be built
    /// from the new config: new attempts use it, attempts running finish on the old one.
    pub rebuild_router: bool,
}

/// Sorts every change between `old` and `new` into live or restart-only. The config is
/// taken apart field by field with no `..`: a field added to [`Config`] (or to its
/// `[smtp]`, `[delivery]` or `[keys]` sections) that is not classified here does not
/// compile, so a reload can never claim to apply what it ignores.
pub fn reload_effect(old: &Config, new: &Config) -> ReloadEffect {
    let Config {
        hostname,
        smtp,
        spool,
        keys,
        domains,
        delivery,
        upstream,
        upstreams,
        routes,
        rotation,
        metrics,
    } = new;
    let crate::config::KeysConfig {
        dir: keys_dir,
        generate_missing,
        backend,
        module,
        token_label,
        pin_file,
    } = keys;
    let crate::config::SmtpConfig {
        listen,
        allowed_networks,
        max_message_size,
        max_recipients,
        max_connections,
        max_connections_per_client,
        max_command_length,
        max_line_length,
        max_errors,
        command_timeout,
        data_timeout,
        tls,
        auth,
        senders,
        max_messages_per_session,
        max_auth_line_length,
        max_header_size,
        min_data_rate,
        max_session_age,
        shutdown_grace,
        upstream_8bitmime,
        write_timeout,
        max_outsider_connections,
        public_relay_limit_ipv4,
        public_relay_limit_ipv6,
        max_data_memory,
        data_memory_wait,
        origins,
    } = smtp;
    let crate::config::DeliveryConfig {
        workers,
        retry_initial,
        retry_max,
        max_lifetime,
        outbox_dir,
        delay_warning,
    } = delivery;
    let (o, os, od) = (old, &old.smtp, &old.delivery);
    let mut effect = ReloadEffect::default();
    let mut note = |changed: bool, live: bool, name: &'static str| match (changed, live) {
        (false, _) => {}
        (true, true) => effect.live.push(name),
        (true, false) => effect.restart.push(name),
    };
    note(*hostname != o.hostname, true, "hostname");
    // [smtp]: what sessions read is live; what sized the listener is not.
    note(*listen != os.listen, false, "smtp.listen");
    note(
        *allowed_networks != os.allowed_networks,
        true,
        "smtp.allowed_networks",
    );
    note(*senders != os.senders, true, "smtp.senders");
    // Validation bounds of the two above; checked when the new config was read.
    note(
        *public_relay_limit_ipv4 != os.public_relay_limit_ipv4,
        true,
        "smtp.public_relay_limit_ipv4",
    );
    note(
        *public_relay_limit_ipv6 != os.public_relay_limit_ipv6,
        true,
        "smtp.public_relay_limit_ipv6",
    );
    note(
        *max_message_size != os.max_message_size,
        true,
        "smtp.max_message_size",
    );
    note(
        *max_recipients != os.max_recipients,
        true,
        "smtp.max_recipients",
    );
    note(
        *max_command_length != os.max_command_length,
        true,
        "smtp.max_command_length",
    );
    note(
        *max_line_length != os.max_line_length,
        true,
        "smtp.max_line_length",
    );
    note(*max_errors != os.max_errors, true, "smtp.max_errors");
    note(
        *command_timeout != os.command_timeout,
        true,
        "smtp.command_timeout",
    );
    note(*data_timeout != os.data_timeout, true, "smtp.data_timeout");
    note(
        *max_messages_per_session != os.max_messages_per_session,
        true,
        "smtp.max_messages_per_session",
    );
    note(
        *max_auth_line_length != os.max_auth_line_length,
        true,
        "smtp.max_auth_line_length",
    );
    note(
        *max_header_size != os.max_header_size,
        true,
        "smtp.max_header_size",
    );
    note(
        *min_data_rate != os.min_data_rate,
        true,
        "smtp.min_data_rate",
    );
    note(
        *max_session_age != os.max_session_age,
        true,
        "smtp.max_session_age",
    );
    note(
        *upstream_8bitmime != os.upstream_8bitmime,
        true,
        "smtp.upstream_8bitmime",
    );
    note(
        *write_timeout != os.write_timeout,
        true,
        "smtp.write_timeout",
    );
    note(
        *data_memory_wait != os.data_memory_wait,
        true,
        "smtp.data_memory_wait",
    );
    // Read from the connection's snapshot at DATA and MAIL: live.
    note(*origins != os.origins, true, "smtp.origins");
    note(
        *max_connections != os.max_connections,
        false,
        "smtp.max_connections",
    );
    note(
        *max_connections_per_client != os.max_connections_per_client,
        false,
        "smtp.max_connections_per_client",
    );
    note(
        *max_outsider_connections != os.max_outsider_connections,
        false,
        "smtp.max_outsider_connections",
    );
    note(*tls != os.tls, false, "smtp.tls");
    note(*auth != os.auth, false, "smtp.auth");
    note(
        *shutdown_grace != os.shutdown_grace,
        false,
        "smtp.shutdown_grace",
    );
    note(
        *max_data_memory != os.max_data_memory,
        false,
        "smtp.max_data_memory",
    );
    note(*spool != o.spool, false, "spool");
    note(*keys_dir != o.keys.dir, false, "keys.dir");
    // The key store (and its token) is opened with the relay; the PIN file's content is
    // read at each login, so a changed PIN needs no restart.
    note(*backend != o.keys.backend, false, "keys.backend");
    note(*module != o.keys.module, false, "keys.module");
    note(
        *token_label != o.keys.token_label,
        false,
        "keys.token_label",
    );
    note(*pin_file != o.keys.pin_file, false, "keys.pin_file");
    note(
        *generate_missing != o.keys.generate_missing,
        true,
        "keys.generate_missing",
    );
    note(*domains != o.domains, true, "domains");
    // [delivery]: each attempt reads the schedule; the workers and the outbox were
    // started with the relay.
    note(
        *retry_initial != od.retry_initial,
        true,
        "delivery.retry_initial",
    );
    note(*retry_max != od.retry_max, true, "delivery.retry_max");
    note(
        *max_lifetime != od.max_lifetime,
        true,
        "delivery.max_lifetime",
    );
    note(
        *delay_warning != od.delay_warning,
        true,
        "delivery.delay_warning",
    );
    note(*workers != od.workers, false, "delivery.workers");
    note(*outbox_dir != od.outbox_dir, false, "delivery.outbox_dir");
    // A new router replaces the old one; going from the outbox to upstreams or back
    // changes what the relay is, and waits for a restart.
    let has_upstreams = |c: &Config| c.upstream.is_some() || !c.upstreams.is_empty();
    let router_live = has_upstreams(o) == (upstream.is_some() || !upstreams.is_empty());
    let router_changed =
        *upstream != o.upstream || *upstreams != o.upstreams || *routes != o.routes;
    note(*upstream != o.upstream, router_live, "upstream");
    note(*upstreams != o.upstreams, router_live, "upstreams");
    note(*routes != o.routes, router_live, "routes");
    note(*rotation != o.rotation, true, "rotation");
    note(*metrics != o.metrics, false, "metrics");
    effect.rebuild_router = router_live && (router_changed || *hostname != o.hostname);
    effect
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13: a reload that changed `[[upstreams]]`, `[[routes]]`, `[metrics]` or
    /// `hostname` used to log "config reloaded" and say nothing of them; every change is
    /// now named as live or restart-only. Upstreams are live between two upstream
    /// configs; from the outbox to an upstream, a restart.
    #[test]
    fn every_changed_field_is_named_live_or_restart_only() {
        let base = "hostname = \"relay.test\"\n[[domains]]\nname = \"example.com\"\n";
        let old = Config::from_toml(base).unwrap();
        assert_eq!(reload_effect(&old, &old), ReloadEffect::default());
        let text =
            "hostname = \"other.test\"\n[[domains]]\nname = \"example.com\"\ned25519 = true\n\
            [[upstreams]]\nname = \"a\"\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\n\
            [[routes]]\nfrom_domains = [\"example.com\"]\nupstreams = [\"a\"]\n\
            [metrics]\nlisten = \"127.0.0.1:9100\"\n[rotation]\ninterval = \"60d\"\n";
        let new = Config::from_toml(text).unwrap();
        let effect = reload_effect(&old, &new);
        assert_eq!(effect.live, ["hostname", "domains", "rotation"]);
        assert_eq!(effect.restart, ["upstreams", "routes", "metrics"]);
        assert!(
            !effect.rebuild_router,
            "outbox to upstreams waits for a restart"
        );
        // Between two upstream configs, the router is rebuilt.
        let other = text.replace("port = 2525", "port = 2526");
        let effect = reload_effect(&new, &Config::from_toml(&other).unwrap());
        assert_eq!(effect.live, ["upstreams"]);
        assert!(effect.restart.is_empty());
        assert!(effect.rebuild_router);
    }

    /// Every `[smtp]` and `[delivery]` field is sorted on its own: what sessions and
    /// attempts read is live, what sized the listener or the workers is named as
    /// restart-only (before, any `[smtp]` change was "smtp", restart-only, and none applied).
    #[test]
    fn smtp_and_delivery_fields_are_sorted_one_by_one() {
        let old = Config::from_toml("[[domains]]\nname = \"example.com\"\n").unwrap();
        let text = "[smtp]\nmax_recipients = 3\nmax_connections = 7\nallowed_networks = [\"10.0.0.0/8\"]\n\
            [delivery]\nretry_initial = \"2m\"\nworkers = 9\n[[domains]]\nname = \"example.com\"\n";
        let effect = reload_effect(&old, &Config::from_toml(text).unwrap());
        assert_eq!(
            effect.live,
            [
                "smtp.allowed_networks",
                "smtp.max_recipients",
                "delivery.retry_initial"
            ]
        );
        assert_eq!(effect.restart, ["smtp.max_connections", "delivery.workers"]);
        assert!(!effect.rebuild_router);
    }

    /// Issue 14: `[[smtp.origins]]` is read from each connection's snapshot, so it is live.
    #[test]
    fn smtp_origins_apply_live() {
        let old = Config::from_toml("[[domains]]\nname = \"example.com\"\n").unwrap();
        let text =
            "[[smtp.origins]]\nnetworks = [\"10.0.0.0/8\"]\nqualify_domain = \"example.com\"\n\
            [[domains]]\nname = \"example.com\"\n";
        let effect = reload_effect(&old, &Config::from_toml(text).unwrap());
        assert_eq!(effect.live, ["smtp.origins"]);
        assert!(effect.restart.is_empty());
    }

    /// Hot reload refuses what `config check` refuses: the two halves of the address space.
    #[test]
    fn a_reload_to_an_open_relay_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        let mut last = String::new();
        for nets in [
            "[smtp]\nallowed_networks = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n",
            "[[smtp.senders]]\nnetworks = [\"::/1\", \"8000::/1\"]\nfrom_domains = [\"*\"]\n",
        ] {
            std::fs::write(&path, nets).unwrap();
            let err = reread_config(&path, &mut last).unwrap_err();
            assert!(err.contains("open relay"), "{err}");
            assert!(
                last.is_empty(),
                "the refused text was taken as the current one"
            );
        }
    }

    /// Reading watched files (as every reload does), writing below the config folder (a
    /// spool kept beside it) and writing the log beside it are not changes; editing the
    /// config file is.
    #[tokio::test]
    async fn reads_and_spool_writes_do_not_wake_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(keys.join("example.com")).unwrap();
        std::fs::create_dir_all(&spool).unwrap();
        std::fs::write(keys.join("example.com/state.json"), "{}").unwrap();
        let config = dir.path().join("relay.toml");
        std::fs::write(&config, "# v1\n").unwrap();
        let (_guard, _wake, mut rx) = watch(&keys, Some(&config)).unwrap();

        for i in 0..3 {
            let _ = store_fingerprint(&keys);
            let _ = std::fs::read(keys.join("example.com/state.json")).unwrap();
            let _ = std::fs::read(&config).unwrap();
            std::fs::write(spool.join("queued.msg"), "x").unwrap();
            // The relay's own log beside its config (systemd `append:`): each reload that
            // logs an error would otherwise wake the next one.
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("relay.log"))
                .unwrap();
            std::io::Write::write_all(&mut log, format!("ERROR line {i}\n").as_bytes()).unwrap();
        }
        // Absence can only be observed over a while: a few debounce periods.
        let woke = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
        assert!(woke.is_err(), "a reload woke without a change");

        std::fs::write(&config, "# v2\n").unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(
            matches!(woke, Ok(Some(()))),
            "no reload after the config changed"
        );
    }
}
