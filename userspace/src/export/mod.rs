//! Where events go. Every output is an [`Exporter`]; the agent hands each
//! record to all of them in order.

pub mod audit_log;
mod channel;
mod json_lines;
pub mod stream;
pub mod text;

pub use audit_log::AuditLog;
pub use channel::ChannelExporter;
pub use json_lines::JsonLinesExporter;
pub use text::TextExporter;

use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing events failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the event consumer went away")]
    Closed,
}

pub trait Exporter: Send {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// `json` is the event serialised once for every exporter (the contract's form).
    fn export(&mut self, event: &Event, json: &str) -> Result<(), ExportError>;
    /// Called after a batch and at shutdown.
    fn flush(&mut self) -> Result<(), ExportError> {
        Ok(())
    }
    /// Called once at a clean stop, after the last record: the audit log
    /// marks the stop; the others flush.
    fn close(&mut self) -> Result<(), ExportError> {
        self.flush()
    }
}
