use std::io::Write;

use super::{ExportError, Exporter};
use crate::event::Event;

/// One JSON object per line.
pub struct JsonLinesExporter<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> JsonLinesExporter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write + Send> Exporter for JsonLinesExporter<W> {
    fn name(&self) -> &'static str {
        "json"
    }

    fn export(&mut self, _event: &Event, json: &str) -> Result<(), ExportError> {
        self.out.write_all(json.as_bytes())?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ExportError> {
        Ok(self.out.flush()?)
    }
}
