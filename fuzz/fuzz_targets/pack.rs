//! The parsing of a received pack: `Incoming::add_pack` (the PBS and the importer call it
//! on every pack body a peer sends) and, under it, `pack::parse_footer` and
//! `pack::parse_trailer`. The input is tried as it is and with its footer's trailer
//! checksum made correct (so that the fuzzer reaches the entry parser). Every entry the
//! trailer parser accepts must point inside the pack's data, as `add_pack` relies on.
#![no_main]

use std::sync::{Mutex, OnceLock};

use archive::id::{ChunkId, Epoch, FileDigest, Seq, SourceName};
use archive::manifest::{ChunkRef, GenRecord, GenStats};
use archive::pack::{self, FOOTER_LEN, MAGIC};
use archive::transfer::Incoming;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn incoming() -> &'static Mutex<Incoming> {
    static INC: OnceLock<Mutex<Incoming>> = OnceLock::new();
    INC.get_or_init(|| {
        let rec = GenRecord {
            source: SourceName::new("fuzz").expect("a valid name"),
            seq: Seq(1),
            epoch: Epoch(0),
            taken_at_ns: 0,
            committed_at_ns: 0,
            label: None,
            stats: GenStats::default(),
            manifest_len: 8,
            manifest_digest: FileDigest::of(b"PBMAN\0\0\x01"),
            manifest_chunks: vec![ChunkRef(ChunkId::of(b"PBMAN\0\0\x01"), 8)],
        };
        let bytes = rec.encode().expect("the record encodes");
        Mutex::new(Incoming::new(&bytes).expect("the record decodes"))
    })
}

fn check(bytes: &[u8]) {
    let _ = incoming()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add_pack(bytes);
    if bytes.len() < MAGIC.len() + FOOTER_LEN {
        return;
    }
    let Ok(f) = pack::parse_footer(&bytes[bytes.len() - FOOTER_LEN..], "fuzzed pack") else {
        return;
    };
    let Some(tlen) = f
        .trailer_len()
        .filter(|&t| t + MAGIC.len() + FOOTER_LEN <= bytes.len())
    else {
        return;
    };
    let t0 = bytes.len() - FOOTER_LEN - tlen;
    let Ok(entries) =
        pack::parse_trailer(&bytes[t0..t0 + tlen], &f, bytes.len() as u64, "fuzzed pack")
    else {
        return;
    };
    for e in entries {
        let end = e.offset as u64 + e.stored_len as u64;
        assert!(
            e.offset as usize >= MAGIC.len() && end <= t0 as u64,
            "entry outside the data"
        );
        assert!(e.bases.len() <= pack::MAX_BASES);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes with the trailer checksum in the footer made right.
    if data.len() >= MAGIC.len() + FOOTER_LEN {
        let mut fixed = data.to_vec();
        let n = fixed.len();
        if let Ok(f) = pack::parse_footer(&fixed[n - FOOTER_LEN..], "fuzzed pack") {
            if let Some(tlen) = f
                .trailer_len()
                .filter(|&t| t + MAGIC.len() + FOOTER_LEN <= n)
            {
                let t0 = n - FOOTER_LEN - tlen;
                let sum = Sha256::digest(&fixed[t0..t0 + tlen]);
                fixed[n - 16..n - 8].copy_from_slice(&sum[..8]);
                check(&fixed);
            }
        }
    }
});
