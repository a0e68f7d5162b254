//! Fan-out of records to every exporter, in order; the run ends when the
//! consumer of one goes away (a closed pipe, a dropped channel).

use std::sync::Arc;

use crate::{
    event::Event,
    export::{ExportError, Exporter},
    metrics::Metrics,
    Error,
};

pub struct Output<'a> {
    exporters: &'a mut [Box<dyn Exporter>],
    pub closed: bool,
    metrics: Arc<Metrics>,
}

impl<'a> Output<'a> {
    pub fn new(exporters: &'a mut [Box<dyn Exporter>], metrics: Arc<Metrics>) -> Self {
        Self { exporters, closed: false, metrics }
    }

    /// Counts the record and hands it, serialised once, to every exporter.
    pub fn send(&mut self, event: &Event) -> Result<(), Error> {
        self.metrics.observe(event);
        let json = serde_json::to_string(event).map_err(std::io::Error::from)?;
        for exporter in self.exporters.iter_mut() {
            if let Err(err) = exporter.export(event, &json) {
                closed_or_error(&mut self.closed, exporter.name(), err)?;
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), Error> {
        for exporter in self.exporters.iter_mut() {
            if let Err(err) = exporter.flush() {
                closed_or_error(&mut self.closed, exporter.name(), err)?;
            }
        }
        Ok(())
    }

    /// The end of a clean run.
    pub fn close(&mut self) -> Result<(), Error> {
        for exporter in self.exporters.iter_mut() {
            if let Err(err) = exporter.close() {
                closed_or_error(&mut self.closed, exporter.name(), err)?;
            }
        }
        Ok(())
    }
}

fn closed_or_error(closed: &mut bool, name: &str, err: ExportError) -> Result<(), Error> {
    match err {
        ExportError::Closed => *closed = true,
        ExportError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => *closed = true,
        ExportError::Io(e) => return Err(Error::Io(std::io::Error::new(e.kind(), format!("{name} output: {e}")))),
    }
    Ok(())
}
