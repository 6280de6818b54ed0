//! Residual planes: format 4 of the magnitude stream (see [`super::magnitude`]), the coder of a
//! dense delta against a low-rank prediction.
//!
//! Where nearly every element changed (a first layer between two snapshots), the class planes
//! of format 3 gain little over plain byte planes and decode at half their speed (each element
//! is merged from its class). Against a low-rank prediction the residual is dense too, so it is
//! coded as the chunk transform's byte planes are: the zigzag of `value - prediction` (bit
//! patterns as integers, wrapping in the element's width), split into byte planes, each coded
//! with its smallest stream coder ([`super::stream`]); a lower plane may be split by whether
//! the element's higher residual bytes are all zero (where they are, this byte is the leading
//! one and small), a context the decoder has from the planes above.
//!
//! Stream: format (u8, 4), then one stream per byte plane, the most significant first; each is
//! a coder id (u8), a length (u32 LE) and the bytes.

use rayon::prelude::*;

use super::magnitude::u32_at;
use super::stream::{self, Coder};
use super::{assemble, code_plane, difference_planes, plane_leads, Transform};

pub const FORMAT: u8 = 4;

/// Codes `value` against `against` (little-endian `W`-byte elements, equal lengths).
pub(super) fn encode_w<const W: usize>(value: &[u8], against: &[u8]) -> Option<Vec<u8>> {
    if value.len() != against.len() || !value.len().is_multiple_of(W) {
        return None;
    }
    let planes = difference_planes::<W>(value, against);
    let leads = plane_leads(&planes);
    let coded: Vec<(Coder, Vec<u8>)> = (0..W).into_par_iter().rev().map(|p| code_plane(&planes[p], leads[p].as_deref())).collect();
    let mut out = Vec::with_capacity(1 + coded.iter().map(|(_, b)| 5 + b.len()).sum::<usize>());
    out.push(FORMAT);
    for (coder, bytes) in coded {
        out.push(coder as u8);
        out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Some(out)
}

/// Decodes a stream of `n` elements (`W` bytes each) against `against` into `out`. Every
/// length is checked against `n`, so a corrupt stream is an error, never a panic or a large
/// allocation; the value's hash covers the rest.
pub(super) fn decode_w<const W: usize>(data: &[u8], against: &[u8], n: usize, out: &mut [u8]) -> Result<(), String> {
    if data.first() != Some(&FORMAT) {
        return Err("residual planes stream has the wrong format".into());
    }
    if against.len() != n * W || out.len() != n * W {
        return Err("residual planes stream: base chunk does not match".into());
    }
    let mut at = 1;
    let mut planes: Vec<Vec<u8>> = vec![Vec::new(); W];
    let mut lead: Option<Vec<bool>> = None;
    for p in (0..W).rev() {
        let coder = data.get(at).copied().and_then(Coder::from_byte).ok_or("residual planes stream has an unknown coder")?;
        let len = u32_at(data, at + 1)? as usize;
        let start = at + 5;
        let bytes = start.checked_add(len).and_then(|end| data.get(start..end)).ok_or("residual planes stream runs past its end")?;
        at = start + len;
        let plane = match (coder, &lead) {
            (Coder::Split, Some(l)) => {
                let (a, b) = stream::decode_split_parts(bytes, n).map_err(|e| format!("residual plane {p}: {e}"))?;
                stream::merge_split(&a, &b, l).map_err(|e| format!("residual plane {p}: {e}"))?
            }
            _ => stream::decode(coder, bytes, n).map_err(|e| format!("residual plane {p}: {e}"))?,
        };
        if p > 0 {
            lead = Some(match lead {
                Some(above) => above.iter().zip(&plane).map(|(&x, &b)| x & (b == 0)).collect(),
                None => plane.iter().map(|&b| b == 0).collect(),
            });
        }
        planes[p] = plane;
    }
    if at != data.len() {
        return Err("residual planes stream has trailing bytes".into());
    }
    assemble::<W>(&planes, None, Some(against), out, Transform::Sub, false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair<const W: usize>(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let mut r = crate::testrand::XorShift::new(seed | 1);
        let (mut value, mut against) = (Vec::new(), Vec::new());
        for i in 0..n {
            let x = r.next_u64();
            let b = x >> 8;
            // Mostly small moves either way, some large ones and some wrapping ones.
            let d = match i % 7 {
                0 => x >> 3,
                1 => 0,
                2 => (x % 5).wrapping_neg(),
                _ => x % 300,
            };
            against.extend_from_slice(&b.to_le_bytes()[..W]);
            value.extend_from_slice(&b.wrapping_add(d).to_le_bytes()[..W]);
        }
        (value, against)
    }

    fn round_trip<const W: usize>(n: usize, seed: u64) -> Result<(), String> {
        let (value, against) = pair::<W>(n, seed);
        let coded = encode_w::<W>(&value, &against).ok_or("not coded")?;
        let mut out = vec![0u8; value.len()];
        decode_w::<W>(&coded, &against, n, &mut out)?;
        assert!(out == value, "W {W}, n {n}");
        Ok(())
    }

    #[test]
    fn round_trips_every_width_and_length() -> Result<(), String> {
        for n in [0, 1, 2, 7, 64, 1000, 20_000] {
            round_trip::<2>(n, n as u64)?;
            round_trip::<4>(n, n as u64 + 1)?;
        }
        Ok(())
    }

    #[test]
    fn zigzag_inverts_for_every_two_byte_delta() {
        for d in 0..=u16::MAX as u64 {
            let z = super::super::residual_word(d, 0, Transform::Sub, false, 2);
            assert_eq!(super::super::value_word(z, 0, Transform::Sub, false, 2), d);
        }
        assert_eq!(super::super::residual_word(5, 3, Transform::Sub, false, 4), 4);
        assert_eq!(super::super::residual_word(3, 5, Transform::Sub, false, 4), 3);
    }

    #[test]
    fn truncated_and_corrupt_streams_are_errors() -> Result<(), String> {
        let (value, against) = pair::<2>(3000, 11);
        let coded = encode_w::<2>(&value, &against).ok_or("not coded")?;
        let mut out = vec![0u8; value.len()];
        for cut in 0..coded.len() {
            assert!(decode_w::<2>(&coded[..cut], &against, 3000, &mut out).is_err(), "cut at {cut}");
        }
        let mut longer = coded.clone();
        longer.push(0);
        assert!(decode_w::<2>(&longer, &against, 3000, &mut out).is_err());
        assert!(decode_w::<2>(&coded, &against[..10], 3000, &mut out).is_err());
        for i in 0..coded.len() {
            let mut bad = coded.clone();
            bad[i] ^= 0x5a;
            // A flipped byte is an error or a wrong value (the hash catches that), never a panic.
            let _ = decode_w::<2>(&bad, &against, 3000, &mut out);
        }
        Ok(())
    }
}
