use super::*;

#[test]
fn embedded_defaults_are_valid_and_loopback_only() {
    let mut config = Config::default();
    config.validate().unwrap();
    assert_eq!(config.smtp.listen.to_string(), "127.0.0.1:2525");
    assert!(config.upstream.is_none());
    assert!(config
        .smtp
        .allowed_networks
        .iter()
        .all(|n| n.addr().is_loopback()));
    assert_eq!(config.smtp.allowed_networks[0].to_string(), "127.0.0.0/8");
}

#[test]
fn the_example_file_parses_and_validates() {
    let text = include_str!("../../config.example.toml");
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config.smtp.max_message_size, ByteSize(25_000_000));
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let err = Config::from_toml("[smtp]\nlisten_on = \"127.0.0.1:25\"\n").unwrap_err();
    assert!(err.to_string().contains("listen_on"), "{err}");
}

#[test]
fn an_open_relay_network_is_refused() {
    let err = Config::from_toml("[smtp]\nallowed_networks = [\"0.0.0.0/0\"]\n").unwrap_err();
    assert!(err.problem.contains("open relay"), "{err}");
    assert!(
        err.problem.contains("smtp.allowed_networks[0] = 0.0.0.0/0"),
        "{err}"
    );
}

#[test]
fn bad_duration_names_the_line() {
    let err = Config::from_toml("[delivery]\nretry_initial = \"5 fortnights\"\n").unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(err.to_string().contains("unknown unit"), "{err}");
}

#[test]
fn username_without_password_file_is_refused() {
    let err = Config::from_toml("[upstream]\nhost = \"smtp.example.net\"\nusername = \"u\"\n")
        .unwrap_err();
    assert_eq!(err.field, "upstream.password_file");
}

#[test]
fn domain_names_are_normalised_and_checked() {
    let config = Config::from_toml("[[domains]]\nname = \"Example.ORG.\"\n").unwrap();
    assert_eq!(config.domains[0].name, "example.org");
    let err = Config::from_toml("[[domains]]\nname = \"not a domain\"\n").unwrap_err();
    assert_eq!(err.field, "domains[0].name");
    let err =
        Config::from_toml("[[domains]]\nname = \"a.example\"\nrsa_selectors = [\"s1\", \"s1\"]\n")
            .unwrap_err();
    assert_eq!(err.field, "domains[0].rsa_selectors");
}

#[test]
fn line_length_below_998_or_above_the_hard_cap_is_refused() {
    Config::from_toml("[smtp]\nmax_line_length = 2000\n").unwrap();
    let err = Config::from_toml("[smtp]\nmax_line_length = 500\n").unwrap_err();
    assert_eq!(err.field, "smtp.max_line_length");
    let err = Config::from_toml("[smtp]\nmax_line_length = 2000000\n").unwrap_err();
    assert_eq!(err.field, "smtp.max_line_length");
}

#[test]
fn a_file_without_domains_signs_for_none_by_default() {
    let config = Config::from_toml("[smtp]\nmax_errors = 5\n").unwrap();
    assert!(config.domains.is_empty());
    assert_eq!(Config::default().domains[0].name, DEFAULT_DOMAIN);
}

#[test]
fn a_hostname_that_is_not_a_host_name_is_refused() {
    for bad in [
        "relay.example\r\nBcc: victim@example.net",
        "relay example",
        "",
        "relay.example\n",
    ] {
        let text = format!("hostname = {bad:?}\n");
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(err.field, "hostname", "{bad:?}");
    }
    for good in ["relay.internal", "localhost", "mx-1.example.com."] {
        Config::from_toml(&format!("hostname = {good:?}\n")).unwrap();
    }
}

#[test]
fn a_grace_below_the_floor_is_refused_even_with_no_upstream_retries() {
    let err = Config::from_toml("[rotation]\ngrace = \"0s\"\nupstream_retry_window = \"0s\"\n")
        .unwrap_err();
    assert_eq!(err.field, "rotation.grace");
    assert!(err.problem.contains("at least 1h"), "{err}");
    let err = Config::from_toml("[rotation]\ngrace = \"59m\"\nupstream_retry_window = \"0s\"\n")
        .unwrap_err();
    assert_eq!(err.field, "rotation.grace");
    Config::from_toml(
        "[rotation]\ngrace = \"1h\"\nupstream_retry_window = \"0s\"\ninterval = \"2h\"\n",
    )
    .unwrap();
}

#[test]
fn the_dns_watch_defaults_to_ten_minutes_and_alert() {
    let config = Config::from_toml("").unwrap();
    assert_eq!(
        config.rotation.dns_watch,
        HumanDuration(Duration::from_secs(600))
    );
    assert_eq!(config.rotation.on_dns_mismatch, OnDnsMismatch::Alert);
    let config =
        Config::from_toml("[rotation]\ndns_watch = \"30s\"\non_dns_mismatch = \"defer\"\n")
            .unwrap();
    assert_eq!(config.rotation.dns_watch.0, Duration::from_secs(30));
    assert_eq!(config.rotation.on_dns_mismatch, OnDnsMismatch::Defer);
}

#[test]
fn a_dns_watch_that_cannot_work_is_refused_with_the_fix() {
    let err = Config::from_toml("[rotation]\ndns_watch = \"0s\"\n").unwrap_err();
    assert_eq!(err.field, "rotation.dns_watch");
    let err = Config::from_toml("[rotation]\non_dns_mismatch = \"hold\"\n").unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(err.to_string().contains("`alert` or `defer`"), "{err}");
    let err = Config::from_toml("[rotation]\ndns_check = false\non_dns_mismatch = \"defer\"\n")
        .unwrap_err();
    assert_eq!(err.field, "rotation.on_dns_mismatch");
    assert!(err.problem.contains("dns_check = true"), "{err}");
}
