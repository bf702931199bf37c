//! The `local` backend (being written).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{LogError, LogHandle, LogProvider, OpenOptions};

/// Settings of the local backend.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Root directory; one subdirectory per pchannel.
    pub root: PathBuf,
}

/// Opens logs stored as segment files under a local directory.
pub struct LocalProvider {
    config: LocalConfig,
}

impl LocalProvider {
    /// A provider over `config.root`.
    pub fn new(config: LocalConfig) -> Result<LocalProvider, LogError> {
        Ok(LocalProvider { config })
    }
}

#[async_trait]
impl LogProvider for LocalProvider {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn open(&self, _options: OpenOptions) -> Result<Arc<dyn LogHandle>, LogError> {
        Err(LogError::Unavailable(format!(
            "local backend at {} is not written yet",
            self.config.root.display()
        )))
    }
}
