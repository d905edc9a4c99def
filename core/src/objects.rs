//! Reading objects back: checking the stored bytes against the manifest and
//! decompressing them (snapshot frames in parallel). Shared by the restore
//! stages, `verify-backups` and the rebuild function.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::repo::{formats, Manifest, ObjectKind};

/// Checks the compressed bytes of an object against its manifest (size and BLAKE3).
///
/// # Errors
/// `Error::Corrupt` naming the object and what differs.
pub fn verify_compressed(m: &Manifest, bytes: &[u8]) -> Result<()> {
    verify_compressed_with(m, bytes, |_| {})
}

/// [`verify_compressed`] hashing in 64 MiB chunks, calling `done` with each
/// chunk's range once hashed (to release it from memory).
///
/// # Errors
/// As [`verify_compressed`].
pub fn verify_compressed_with(
    m: &Manifest,
    bytes: &[u8],
    mut done: impl FnMut(std::ops::Range<usize>),
) -> Result<()> {
    if bytes.len() as u64 != m.compressed_size {
        return Err(Error::corrupt(
            &m.id,
            format!(
                "stored object is {} bytes, manifest says {} (truncated or replaced)",
                bytes.len(),
                m.compressed_size
            ),
        ));
    }
    let mut h = blake3::Hasher::new();
    const CHUNK: usize = 64 << 20;
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + CHUNK).min(bytes.len());
        hash_raw(&mut h, &bytes[at..end]);
        done(at..end);
        at = end;
    }
    let got = h.finalize().to_hex();
    if got.as_str() != m.blake3_compressed {
        return Err(Error::corrupt(
            &m.id,
            format!(
                "BLAKE3 of the stored bytes is {got}, manifest says {}",
                m.blake3_compressed
            ),
        ));
    }
    Ok(())
}

/// Decompresses an object into its raw frames (one for segments and events),
/// checking sizes and the BLAKE3 of the raw content.
///
/// # Errors
/// `Error::Corrupt` naming the object.
pub fn decompress_object(m: &Manifest, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let frames: Vec<Vec<u8>> = match m.kind {
        ObjectKind::Snapshot => {
            check_snapshot_layout(m, bytes)?;
            decompress_frames(m, bytes, 0..m.frames.len())?
        }
        _ => vec![formats::decompress(&m.id, bytes, m.raw_size)?],
    };
    let mut h = blake3::Hasher::new();
    for f in &frames {
        hash_raw(&mut h, f);
    }
    check_raw_hash(m, h)?;
    Ok(frames)
}

/// Checks that a snapshot's frames tile its raw content and lie inside
/// its compressed bytes (before any frame is decompressed).
///
/// # Errors
/// `Error::Corrupt` naming the object.
pub fn check_snapshot_layout(m: &Manifest, bytes: &[u8]) -> Result<()> {
    let mut expect_raw = 0u64;
    for f in &m.frames {
        if f.raw_offset != expect_raw {
            return Err(Error::corrupt(&m.id, "snapshot frames are not contiguous"));
        }
        expect_raw = expect_raw.checked_add(f.raw_len).ok_or_else(|| {
            Error::corrupt(&m.id, "snapshot frames add up to more than 2^64 bytes")
        })?;
        let end = f.comp_offset.checked_add(f.comp_len);
        if end.is_none_or(|e| e > bytes.len() as u64) {
            return Err(Error::corrupt(
                &m.id,
                "a snapshot frame lies beyond the end of the object",
            ));
        }
    }
    if expect_raw != m.raw_size {
        return Err(Error::corrupt(
            &m.id,
            "snapshot frames do not add up to the raw size",
        ));
    }
    Ok(())
}

/// Decompresses the snapshot frames `range` in parallel (the layout checked
/// first with [`check_snapshot_layout`]).
///
/// # Errors
/// `Error::Corrupt` naming the object.
pub fn decompress_frames(
    m: &Manifest,
    bytes: &[u8],
    range: std::ops::Range<usize>,
) -> Result<Vec<Vec<u8>>> {
    let frames = m
        .frames
        .get(range)
        .ok_or_else(|| Error::corrupt(&m.id, "asked for frames the snapshot does not have"))?;
    frames
        .par_iter()
        .map(|f| {
            let s = bytes
                .get(f.comp_offset as usize..(f.comp_offset + f.comp_len) as usize)
                .ok_or_else(|| {
                    Error::corrupt(&m.id, "a snapshot frame lies beyond the end of the object")
                })?;
            formats::decompress(&m.id, s, f.raw_len)
        })
        .collect()
}

/// Adds raw content to a BLAKE3 of an object's raw content.
pub fn hash_raw(h: &mut blake3::Hasher, raw: &[u8]) {
    if raw.len() > 1 << 20 {
        h.update_rayon(raw);
    } else {
        h.update(raw);
    }
}

/// Compares a finished BLAKE3 of the raw content with the manifest's.
///
/// # Errors
/// `Error::Corrupt` naming the object.
pub fn check_raw_hash(m: &Manifest, h: blake3::Hasher) -> Result<()> {
    let got = h.finalize().to_hex();
    if got.as_str() != m.blake3_raw {
        return Err(Error::corrupt(
            &m.id,
            format!(
                "BLAKE3 of the raw content is {got}, manifest says {}",
                m.blake3_raw
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::repo::FrameEntry;

    fn snapshot(frames: Vec<FrameEntry>) -> Manifest {
        Manifest {
            frames,
            ..Manifest::for_test("full_1", ObjectKind::Snapshot)
        }
    }

    /// Found with the `object` fuzz target's input layout: snapshot frames
    /// whose raw lengths add up past 2^64 panicked (overflow) instead of
    /// being a corrupt object.
    #[test]
    fn snapshot_frames_whose_sizes_overflow_are_corrupt() {
        let frame = |raw_offset| FrameEntry {
            raw_offset,
            raw_len: 1 << 63,
            comp_offset: 0,
            comp_len: 1,
        };
        let m = snapshot(vec![frame(0), frame(1 << 63)]);
        let err = decompress_object(&m, &[0u8; 4]).expect_err("corrupt");
        assert!(
            err.to_string().contains("add up to more than 2^64"),
            "{err}"
        );
    }
}
