//! Fuzz target: any bytes (read as UTF-8, lossily) through the prototxt reader. It must never
//! panic, and whatever parses must survive print -> parse and JSON export -> import unchanged.
//! Crashing inputs go into a named regression test in `tests/it`.
#![no_main]

use dlv_graph::Net;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    let Ok(net) = Net::from_prototxt(&src, "fuzz") else { return };
    let _ = net.infer_shapes();
    let text = net.to_prototxt();
    let back = match Net::from_prototxt(&text, "printed") {
        Ok(back) => back,
        Err(e) => panic!("printed net does not parse: {e}\n{text}"),
    };
    // NaN parameters never compare equal; everything else must.
    if !text.contains("nan") {
        assert_eq!(back, net, "print -> parse changed the net:\n{text}");
        assert_eq!(Net::from_json(&net.to_json()).ok().as_ref(), Some(&net), "JSON round trip changed the net");
    }
});
