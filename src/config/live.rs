//! The config in force: one snapshot, replaced whole on hot reload, read by key loading,
//! rotation and /readyz. Readers take an `Arc` and keep a consistent view for as long as
//! they hold it.

use super::Config;
use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct LiveConfig(RwLock<Arc<Config>>);

impl LiveConfig {
    pub fn new(config: impl Into<Arc<Config>>) -> LiveConfig {
        LiveConfig(RwLock::new(config.into()))
    }

    pub fn current(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, config: Config) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}
