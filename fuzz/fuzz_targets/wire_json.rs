//! The JSON bodies the daemons deserialize (`wire::ha`, `wire::api`): hello, takeover,
//! switchover, rejoin, promote, the role file and verdict a node reads back, and the
//! notify, transaction, need and apply bodies. The first byte picks the type, the rest
//! is the body. A body that parses must serialize and parse again to the same value.
//! (The takeover page's form lives in the importer binary and is not reached here.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wire::ha::{
    Hello, PromoteRequest, RejoinRequest, RoleFile, SwitchoverRequest, TakeoverRequest, Verdict,
};

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let text = serde_json::to_vec(&v).expect("a parsed body serializes");
    let back: T = serde_json::from_slice(&text).expect("a serialized body parses");
    assert_eq!(back, v);
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 11 {
        0 => round_trip::<Hello>(body),
        1 => {
            // TakeoverRequest's Debug hides the password; compare fields by hand.
            if let Ok(v) = serde_json::from_slice::<TakeoverRequest>(body) {
                let text = serde_json::to_vec(&v).expect("serializes");
                let back: TakeoverRequest = serde_json::from_slice(&text).expect("parses");
                assert!(back == v, "takeover request changed on a round trip");
            }
        }
        2 => round_trip::<SwitchoverRequest>(body),
        3 => round_trip::<RejoinRequest>(body),
        4 => round_trip::<PromoteRequest>(body),
        5 => round_trip::<RoleFile>(body),
        6 => round_trip::<wire::api::Notify>(body),
        7 => round_trip::<wire::api::TxState>(body),
        // The answer of GET /v1/generations/{source}.
        8 => round_trip::<Vec<u64>>(body),
        9 => round_trip::<wire::api::ApplyResult>(body),
        _ => round_trip::<Verdict>(body),
    }
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = wire::ha::Role::parse(s);
        // Whatever a peer names itself, a page made of it is well formed text.
        let _ = wire::html::page(s, "", maud::html! { p { (s) } });
    }
});
