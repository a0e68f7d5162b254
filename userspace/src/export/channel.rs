use std::sync::mpsc::Sender;

use super::{ExportError, Exporter};
use crate::event::Event;

/// Hands events to another thread (tests, embedding programs).
pub struct ChannelExporter {
    sender: Sender<Event>,
}

impl ChannelExporter {
    pub fn new(sender: Sender<Event>) -> Self {
        Self { sender }
    }
}

impl Exporter for ChannelExporter {
    fn name(&self) -> &'static str {
        "channel"
    }

    fn export(&mut self, event: &Event, _json: &str) -> Result<(), ExportError> {
        self.sender.send(event.clone()).map_err(|_| ExportError::Closed)
    }
}
