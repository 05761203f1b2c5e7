//! `GenRecord::decode`: the record a PBS takes from an exporter (`Incoming::new`) and an
//! importer from the PBS. The input is tried as it is and as a CBOR body with the magic
//! and a correct checksum put around it (so that the fuzzer reaches the CBOR decoder).
//! A record that decodes must be usable: a valid source name, and it must encode again.
#![no_main]

use archive::manifest::{GenRecord, GEN_MAGIC};
use archive::SourceName;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn check(bytes: &[u8]) {
    let Ok(rec) = GenRecord::decode(bytes, "fuzzed record") else {
        return;
    };
    assert!(
        SourceName::new(rec.source.as_str()).is_ok(),
        "decoded a record of an invalid source name {:?}",
        rec.source.as_str()
    );
    let again = rec.encode().expect("a decoded record encodes");
    let back = GenRecord::decode(&again, "re-encoded").expect("a re-encoded record decodes");
    assert_eq!(back, rec);
    let _ = archive::manifest::gen_key(&rec.source, rec.seq);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut wrapped = GEN_MAGIC.to_vec();
    wrapped.extend_from_slice(data);
    let sum = Sha256::digest(&wrapped);
    wrapped.extend_from_slice(&sum);
    check(&wrapped);
});
