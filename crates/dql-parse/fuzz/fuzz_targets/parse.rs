//! Fuzz target `parse`: arbitrary bytes into the DQL parser and the pattern compiler. A query that
//! parses must print to text that parses back to the same tree; nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    if let Ok(query) = dql_parse::parse(src) {
        let printed = query.to_string();
        match dql_parse::parse(&printed) {
            Ok(back) => assert_eq!(back, query, "round trip changed the tree; printed:\n{printed}"),
            Err(e) => panic!("printed query does not parse: {e}\nprinted:\n{printed}"),
        }
    }
    if let Ok(pattern) = dql_parse::parse_pattern(src) {
        if let Some(captures) = pattern.matches(src) {
            assert_eq!(captures.len(), pattern.captures());
            let _ = dql_parse::substitute(src, &captures);
        }
    }
});
