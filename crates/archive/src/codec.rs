//! Blob encoding: zstd frames, optionally compressed against a base chunk used
//! as a zstd reference prefix (what `zstd --patch-from` does), which turns a
//! chunk that differs a little from an older one into a small delta.

use zstd_safe::{CCtx, CParameter, DCtx, DParameter};

use crate::error::{corrupt, Result};

/// Window large enough for the largest prefix plus the largest chunk.
const WINDOW_LOG: u32 = 23;
/// zstd level of deltas (with long-distance matching).
const DELTA_LEVEL: i32 = 1;
/// Most bytes of reference prefix a delta may use.
pub const MAX_PREFIX: usize = 3 << 20;

fn zerr(code: usize) -> String {
    zstd_safe::get_error_name(code).to_owned()
}

/// Compress `data`, with `base` as reference prefix when given.
pub fn encode(data: &[u8], base: Option<&[u8]>, level: i32) -> Result<Vec<u8>> {
    let mut cctx = CCtx::create();
    let set = |cctx: &mut CCtx, p| cctx.set_parameter(p).map_err(zerr);
    let r: std::result::Result<Vec<u8>, String> = (|| {
        set(&mut cctx, CParameter::CompressionLevel(level))?;
        set(&mut cctx, CParameter::ChecksumFlag(false))?;
        if let Some(base) = base {
            // Deltas: long-distance matching finds the long runs shared with
            // the prefix, whatever its size; the fast strategy does the rest.
            set(&mut cctx, CParameter::WindowLog(WINDOW_LOG))?;
            set(&mut cctx, CParameter::CompressionLevel(DELTA_LEVEL))?;
            set(&mut cctx, CParameter::EnableLongDistanceMatching(true))?;
            cctx.ref_prefix(base).map_err(zerr)?;
        }
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
        cctx.compress2(&mut out, data).map_err(zerr)?;
        Ok(out)
    })();
    r.map_err(|e| corrupt("zstd compression", e))
}

/// Decompress a blob of known plain length `raw_len`.
pub fn decode(blob: &[u8], base: Option<&[u8]>, raw_len: usize) -> Result<Vec<u8>> {
    // Every chunk is at most the chunker's largest: a blob claiming more is damaged, and
    // is refused before anything is allocated by the claim.
    if raw_len > crate::chunker::MAX_CHUNK as usize {
        return Err(corrupt(
            "blob",
            format!(
                "plain length {raw_len} over the limit of {} bytes a chunk",
                crate::chunker::MAX_CHUNK
            ),
        ));
    }
    let mut dctx = DCtx::create();
    let mut out = Vec::with_capacity(raw_len);
    let r: std::result::Result<usize, String> = (|| {
        dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG + 1))
            .map_err(zerr)?;
        if let Some(base) = base {
            dctx.ref_prefix(base).map_err(zerr)?;
        }
        dctx.decompress(&mut out, blob).map_err(zerr)
    })();
    match r {
        Ok(n) if n == raw_len => Ok(out),
        Ok(n) => Err(corrupt(
            "blob",
            format!("decoded to {n} bytes, expected {raw_len}"),
        )),
        Err(e) => Err(corrupt("blob", format!("zstd: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delta_is_small_for_a_small_change() {
        let base: Vec<u8> = (0..60_000u32)
            .flat_map(|i| format!("{i}\t{:x}\n", i.wrapping_mul(2654435761)).into_bytes())
            .collect();
        let mut changed = base.clone();
        changed.drain(100_000..100_050);
        changed.splice(500_000..500_000, b"inserted row\n".iter().copied());
        let full = encode(&changed, None, 3).unwrap();
        let delta = encode(&changed, Some(&base), 3).unwrap();
        assert!(
            delta.len() * 50 < full.len(),
            "{} vs {}",
            delta.len(),
            full.len()
        );
        assert_eq!(decode(&delta, Some(&base), changed.len()).unwrap(), changed);
        // The wrong base, or none, does not silently decode to the right bytes.
        assert!(decode(&delta, None, changed.len())
            .map(|d| d != changed)
            .unwrap_or(true));
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000),
                      base in proptest::collection::vec(any::<u8>(), 0..5000),
                      use_base: bool, level in 1i32..4) {
            let b = if use_base { Some(&base[..]) } else { None };
            let enc = encode(&data, b, level).unwrap();
            prop_assert_eq!(decode(&enc, b, data.len()).unwrap(), data);
        }
    }
}
