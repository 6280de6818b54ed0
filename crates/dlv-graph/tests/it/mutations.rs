//! The parser over a few thousand deterministic pseudo-random mutations of the test data nets:
//! no panic, and whatever parses survives print -> parse and JSON export -> import.

use dlv_graph::Net;

use crate::{read, NETS, SOLVERS};

/// xorshift64*, fixed seed: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Characters and snippets that matter to the grammar.
const PIECES: &[&str] = &[
    "{", "}", "<", ">", ":", ";", ",", "[", "]", "\"", "'", "\\", "#", "\n", "-", ".", "0x", "1e", "e-",
    "inf", "nan", "true", "layer {", "layers {", "include { phase: TEST }", "top: \"conv1\"", "\\x4", "\\1",
    "é", "\0", "9999999999999999999999",
];

fn mutate(rng: &mut Rng, src: &str) -> String {
    let mut chars: Vec<char> = src.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(4) {
            0 => {
                let len = 1 + rng.below(16);
                let end = (at + len).min(chars.len());
                chars.drain(at..end);
            }
            1 => {
                let piece = PIECES[rng.below(PIECES.len())];
                chars.splice(at..at, piece.chars());
            }
            2 => {
                let len = rng.below(64);
                let end = (at + len).min(chars.len());
                let chunk: Vec<char> = chars[at..end].to_vec();
                let to = rng.below(chars.len() + 1);
                chars.splice(to..to, chunk);
            }
            _ => {
                if at < chars.len() {
                    chars[at] = char::from(rng.below(128) as u8);
                }
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_nets_never_panic() {
    let sources: Vec<String> = NETS.iter().chain(SOLVERS).map(|n| read(n)).collect();
    let mut rng = Rng(0x5eed_d1f0_0d15_ea5e);
    let (mut parsed, mut failed) = (0, 0);
    for i in 0..4000 {
        let src = mutate(&mut rng, &sources[i % sources.len()]);
        match Net::from_prototxt(&src, "mutant") {
            Err(e) => {
                failed += 1;
                // Every error names the file.
                let msg = e.to_string();
                assert!(msg.contains("mutant"), "{msg}");
            }
            Ok(net) => {
                parsed += 1;
                let _ = net.infer_shapes();
                let text = net.to_prototxt();
                if text.contains("nan") {
                    continue; // NaN never equals itself.
                }
                let back = Net::from_prototxt(&text, "printed").unwrap_or_else(|e| panic!("mutant {i}: {e}\n{text}"));
                assert_eq!(back, net, "mutant {i}:\n{src}");
                let json = net.to_json();
                assert_eq!(Net::from_json(&json).ok(), Some(net), "mutant {i}");
            }
        }
    }
    // Both outcomes must be exercised for the test to mean something.
    assert!(parsed > 100 && failed > 100, "parsed {parsed}, failed {failed}");
}
