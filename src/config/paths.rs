//! Paths in a config file are read relative to that file's folder, not to the directory
//! the relay happens to be started in: under systemd the working directory is whatever
//! the unit says (often `/`), so `dir = "spool"` would otherwise mean `/spool`. The
//! embedded defaults (no file) keep their paths relative to the current directory, which
//! is what the README's first command (`cargo run -- serve` in a checkout) wants.

use super::{Config, ConfigError};
use std::path::{Path, PathBuf};

impl Config {
    /// Parses and validates `text`, read from the config file at `path`: relative paths in
    /// it are taken from the file's folder. Used at start and by hot reload, so both read
    /// a file the same way.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        if sets_nothing(text) {
            return Err(ConfigError::new(
                path.display().to_string(),
                "the file is empty (only blank lines and comments): write the settings you \
                 want (see config.example.toml), or run without --config for the laptop defaults",
            ));
        }
        let mut config = Config::parse(text)?;
        config.resolve_relative_paths(&folder_of(path));
        config.validate()?;
        Ok(config)
    }

    /// Makes every file and directory path in the config absolute against `base`.
    /// One list of every path field, so a new one is added here and nowhere else.
    fn resolve_relative_paths(&mut self, base: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        at(&mut self.spool.dir);
        at(&mut self.keys.dir);
        // Not `module`: a bare library name is the dynamic loader's to find.
        self.keys.pin_file.iter_mut().for_each(at);
        at(&mut self.delivery.outbox_dir);
        if let Some(tls) = &mut self.smtp.tls {
            at(&mut tls.cert_file);
            at(&mut tls.key_file);
        }
        if let Some(auth) = &mut self.smtp.auth {
            at(&mut auth.users_file);
        }
        for upstream in self.upstream.iter_mut().chain(self.upstreams.iter_mut()) {
            upstream.password_file.iter_mut().for_each(at);
            upstream.ca_file.iter_mut().for_each(at);
            upstream.client_secret_file.iter_mut().for_each(at);
            upstream.service_account_file.iter_mut().for_each(at);
        }
        self.rotation.publish_hook.iter_mut().for_each(at);
    }
}

/// The absolute folder holding the config file (the current directory for a bare name).
fn folder_of(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

/// A file of blank lines and comments would silently run the laptop defaults.
fn sets_nothing(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_taken_from_the_config_files_folder() {
        // Validation reads the password file, so the folder is real.
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("secret"), "pw\n").unwrap();
        std::fs::create_dir(etc.join("hooks")).unwrap();
        std::fs::write(etc.join("hooks/publish"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            etc.join("hooks/publish"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let text = "[spool]\ndir = \"spool\"\n[keys]\ndir = \"../keys\"\n[delivery]\noutbox_dir = \"/abs/outbox\"\n[rotation]\npublish_hook = \"hooks/publish\"\n[upstream]\nhost = \"smtp.example.net\"\nusername = \"u\"\npassword_file = \"secret\"\n";
        let config = Config::from_file_text(&etc.join("config.toml"), text).unwrap();
        assert_eq!(config.spool.dir, etc.join("spool"));
        assert_eq!(config.keys.dir, etc.join("../keys"));
        assert_eq!(config.delivery.outbox_dir, Path::new("/abs/outbox"));
        assert_eq!(
            config.rotation.publish_hook.as_deref(),
            Some(etc.join("hooks/publish").as_path())
        );
        let upstream = config.upstream.as_ref().unwrap();
        assert_eq!(
            upstream.password_file.as_deref(),
            Some(etc.join("secret").as_path())
        );
    }

    #[test]
    fn a_bare_file_name_resolves_against_the_current_directory() {
        let config =
            Config::from_file_text(Path::new("relay.toml"), "[spool]\nfsync = true\n").unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(config.spool.dir, cwd.join("spool"));
    }

    #[test]
    fn an_empty_file_is_refused_instead_of_running_the_laptop_defaults() {
        for text in ["", "\n  \n", "# just a comment\n\n# another\n"] {
            let err =
                Config::from_file_text(Path::new("/etc/dkim-relay/config.toml"), text).unwrap_err();
            assert!(err.to_string().contains("the file is empty"), "{err}");
        }
    }
}
