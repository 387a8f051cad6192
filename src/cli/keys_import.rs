//! `keys import-opendkim`: bring an OpenDKIM setup (KeyTable + SigningTable) into the key
//! store. Imported keys are active at once: OpenDKIM signs with them, so DNS serves them.
//! Rotation later moves each domain onto its configured s1/s2 (e1/e2) slots.

use crate::keys::{
    public_key_of, Algorithm, DomainState, KeyMaterial, KeyStore, SlotState, StoreLock,
};
use anyhow::{bail, Context};
use clap::Args;
use std::collections::HashSet;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// OpenDKIM's KeyTable (`name domain:selector:keyfile` per line).
    #[arg(long, value_name = "FILE")]
    pub key_table: std::path::PathBuf,
    /// OpenDKIM's SigningTable (which key signs which From address or domain).
    #[arg(long, value_name = "FILE")]
    pub signing_table: std::path::PathBuf,
}

/// One KeyTable line: `name domain:selector:/path/to/key`.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub name: String,
    pub domain: String,
    pub selector: String,
    pub path: String,
}

fn table_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.split('#').next().unwrap_or("").trim();
        (!line.is_empty()).then(|| (i + 1, line.split_whitespace().collect()))
    })
}

pub fn parse_key_table(text: &str) -> anyhow::Result<Vec<KeyEntry>> {
    let mut out = Vec::new();
    for (line_no, fields) in table_lines(text) {
        let [name, value] = fields.as_slice() else {
            bail!("KeyTable line {line_no}: expected `name domain:selector:keyfile`");
        };
        let mut parts = value.splitn(3, ':');
        let (Some(domain), Some(selector), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("KeyTable line {line_no}: expected domain:selector:keyfile, got {value}");
        };
        out.push(KeyEntry {
            name: name.to_string(),
            domain: crate::domain::normalise(domain),
            selector: selector.to_string(),
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// Key names the SigningTable uses (`pattern keyname`).
pub fn parse_signing_table(text: &str) -> anyhow::Result<HashSet<String>> {
    let mut used = HashSet::new();
    for (line_no, fields) in table_lines(text) {
        let [_, key] = fields.as_slice() else {
            bail!("SigningTable line {line_no}: expected `pattern keyname`");
        };
        used.insert(key.to_string());
    }
    Ok(used)
}

pub fn import(store: &KeyStore, args: ImportArgs) -> anyhow::Result<()> {
    let read =
        |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| p.display().to_string());
    let keys = parse_key_table(&read(&args.key_table)?)?;
    let used = parse_signing_table(&read(&args.signing_table)?)?;
    let _lock = StoreLock::acquire(store.dir()).context("key store lock")?;
    let now = crate::clock::now_unix();
    let mut imported = 0;
    for entry in keys.iter().filter(|k| used.contains(&k.name)) {
        if !crate::config::is_dns_name(&entry.domain)
            || !crate::config::is_dns_label(&entry.selector)
        {
            bail!(
                "{}: \"{}\" / \"{}\" is not a domain / selector",
                entry.name,
                entry.domain,
                entry.selector
            );
        }
        let pem = zeroize::Zeroizing::new(read(std::path::Path::new(&entry.path))?);
        let (algorithm, public_key) = match public_key_of(Algorithm::Rsa, &pem) {
            Ok(p) => (Algorithm::Rsa, p),
            Err(_) => (
                Algorithm::Ed25519,
                public_key_of(Algorithm::Ed25519, &pem)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| entry.path.clone())?,
            ),
        };
        let state = store
            .load(&entry.domain)?
            .unwrap_or_else(|| DomainState::new(&entry.domain));
        if state.slot(&entry.selector).is_some() {
            println!(
                "{} {}: already in the store, skipped",
                entry.domain, entry.selector
            );
            continue;
        }
        if state.has_active(algorithm) {
            println!(
                "{} {}: the domain already has an active {algorithm} key, skipped",
                entry.domain, entry.selector
            );
            continue;
        }
        let material = KeyMaterial {
            private_pem: pem,
            public_key,
        };
        store.add_key(
            &entry.domain,
            &entry.selector,
            algorithm,
            &material,
            SlotState::Active,
            now,
        )?;
        let into = match store.token() {
            // The file is the operator's to delete: we never remove what we did not make.
            Some(token) => format!(
                " into PKCS#11 token \"{}\" (sensitive, not extractable; delete {} once OpenDKIM no longer needs it)",
                token.label(),
                entry.path
            ),
            None => String::new(),
        };
        println!(
            "{} {}: imported {algorithm} key from {}{into} (active)",
            entry.domain, entry.selector, entry.path
        );
        imported += 1;
    }
    println!("{imported} key(s) imported into {}", store.dir().display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opendkim_tables_parse() {
        let keys = parse_key_table("# comment\nmail._domainkey.example.com example.com:mail:/etc/opendkim/keys/example.com/mail.private\n").unwrap();
        assert_eq!(keys[0].domain, "example.com");
        assert_eq!(keys[0].selector, "mail");
        assert_eq!(keys[0].path, "/etc/opendkim/keys/example.com/mail.private");
        let used = parse_signing_table("*@example.com mail._domainkey.example.com\n").unwrap();
        assert!(used.contains("mail._domainkey.example.com"));
        assert!(parse_key_table("only-one-field\n").is_err());
    }
}
