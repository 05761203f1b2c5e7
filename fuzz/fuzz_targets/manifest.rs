//! `decode_manifest` (which runs `validate_list`): the file list a PBS or an importer
//! decodes from received chunks before anything acts on it. A list that decodes must
//! hold no unsafe path and no entry under a non-folder; `validate_list` is also run
//! again on the decoded list and on it with one entry dropped (a parent removed).
#![no_main]

use archive::manifest::{decode_manifest, encode_manifest, validate_list, MANIFEST_MAGIC};
use archive::NodeKind;
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    let Ok(nodes) = decode_manifest(bytes, "fuzzed manifest") else {
        return;
    };
    let mut seen = std::collections::HashMap::new();
    for n in &nodes {
        let p = &n.path;
        assert!(
            !p.is_empty() && p[0] != b'/' && !p.contains(&0),
            "unsafe path {p:?}"
        );
        assert!(
            p.split(|&b| b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b".."),
            "unsafe component in {p:?}"
        );
        if let Some(cut) = p.iter().rposition(|&b| b == b'/') {
            assert_eq!(seen.get(&p[..cut]), Some(&NodeKind::Dir), "parent of {p:?}");
        }
        seen.insert(p.clone(), n.kind);
    }
    let again = encode_manifest(&nodes).expect("a decoded list encodes");
    assert_eq!(
        decode_manifest(&again, "re-encoded").ok().as_ref(),
        Some(&nodes)
    );
    if nodes.len() > 1 {
        let mut fewer = nodes.clone();
        fewer.remove(0);
        let _ = validate_list(&fewer);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut wrapped = MANIFEST_MAGIC.to_vec();
    wrapped.extend_from_slice(data);
    check(&wrapped);
});
