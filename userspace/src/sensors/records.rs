//! Reading the kernel side's records: each starts with an `EventHeader`
//! whose kind says which `#[repr(C)]` struct of `nstrail_abi` it is.

use nstrail_abi::EventHeader;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {len} bytes is shorter than its {need}-byte {what}")]
    Short { what: &'static str, len: usize, need: usize },
    #[error("record has unknown event kind {0}")]
    UnknownKind(u32),
}

/// Copies a `T` out of the front of `bytes` (which need not be aligned).
pub fn read_record<T: aya::Pod>(bytes: &[u8], what: &'static str) -> Result<T, RecordError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(RecordError::Short { what, len: bytes.len(), need });
    }
    // SAFETY: T is Pod (any bit pattern is valid) and `bytes` holds at least
    // size_of::<T>() bytes; read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Copies a `T` out of a record that may be shorter than `T` (its tail
/// left off because it was not used), at least `need` bytes long; the rest
/// of `T` is zero.
pub fn read_record_prefix<T: aya::Pod + Default>(
    bytes: &[u8],
    need: usize,
    what: &'static str,
) -> Result<T, RecordError> {
    if bytes.len() < need {
        return Err(RecordError::Short { what, len: bytes.len(), need });
    }
    let mut value = T::default();
    let len = bytes.len().min(std::mem::size_of::<T>());
    // SAFETY: T is Pod, so any bytes make a valid T; at most size_of::<T>()
    // bytes are copied into it from a buffer holding at least that many.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), len) };
    Ok(value)
}

/// The kind of a record.
pub fn kind_of(bytes: &[u8]) -> Result<u32, RecordError> {
    read_record::<EventHeader>(bytes, "event header").map(|h| h.kind)
}

/// The bytes of a `Pod` value, for tests that build records.
#[cfg(test)]
pub fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: Pod values are plain bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nstrail_abi::{event_kind, netns::NetnsEnterEvent};

    #[test]
    fn reads_from_unaligned_buffers_and_checks_lengths() {
        let enter = NetnsEnterEvent {
            header: EventHeader { kind: event_kind::NETNS_ENTER, cpu: 1, boot_ns: 42 },
            ..Default::default()
        };
        let mut buf = vec![0u8];
        buf.extend(bytes_of(&enter));
        assert_eq!(read_record::<NetnsEnterEvent>(&buf[1..], "netns_enter event"), Ok(enter));
        assert_eq!(kind_of(&buf[1..]), Ok(event_kind::NETNS_ENTER));
        assert_eq!(
            read_record::<NetnsEnterEvent>(&buf[1..41], "netns_enter event"),
            Err(RecordError::Short { what: "netns_enter event", len: 40, need: buf.len() - 1 })
        );
        assert_eq!(kind_of(&buf[1..9]), Err(RecordError::Short { what: "event header", len: 8, need: 16 }));
    }
}
