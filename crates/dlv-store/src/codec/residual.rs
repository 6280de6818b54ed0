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
use super::{code_plane, load, plane_leads};

pub const FORMAT: u8 = 4;

/// The zigzag of the wrapping difference of two `W`-byte words.
#[inline(always)]
fn zigzag<const W: usize>(v: u64, b: u64) -> u64 {
    let sh = 64 - 8 * W as u32;
    let d = (v.wrapping_sub(b) << sh) as i64 >> sh;
    ((d << 1) ^ (d >> 63)) as u64 & mask::<W>()
}

#[inline(always)]
fn mask<const W: usize>() -> u64 {
    if W == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * W)) - 1
    }
}

/// Codes `value` against `against` (little-endian `W`-byte elements, equal lengths).
pub(super) fn encode_w<const W: usize>(value: &[u8], against: &[u8]) -> Option<Vec<u8>> {
    if value.len() != against.len() || !value.len().is_multiple_of(W) {
        return None;
    }
    let n = value.len() / W;
    let mut planes = vec![vec![0u8; n]; W];
    match &mut planes[..] {
        // Two-byte elements in one pass that vectorises (zipped, no bounds checks).
        [lo, hi] => {
            for (((v, b), l), h) in value.chunks_exact(2).zip(against.chunks_exact(2)).zip(lo.iter_mut()).zip(hi.iter_mut()) {
                let d = u16::from_le_bytes([v[0], v[1]]).wrapping_sub(u16::from_le_bytes([b[0], b[1]])) as i16;
                let z = ((d << 1) ^ (d >> 15)) as u16;
                *l = z as u8;
                *h = (z >> 8) as u8;
            }
        }
        planes => {
            for (i, (v, b)) in value.chunks_exact(W).zip(against.chunks_exact(W)).enumerate() {
                let z = zigzag::<W>(load::<W>(v), load::<W>(b));
                for (p, plane) in planes.iter_mut().enumerate() {
                    if let Some(x) = plane.get_mut(i) {
                        *x = (z >> (8 * p)) as u8;
                    }
                }
            }
        }
    }
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
    match &planes[..] {
        [lo, hi] => {
            for (((o, b), &l), &h) in out.chunks_exact_mut(2).zip(against.chunks_exact(2)).zip(lo).zip(hi) {
                let z = u16::from_le_bytes([l, h]);
                let d = (z >> 1) ^ (z & 1).wrapping_neg();
                o.copy_from_slice(&u16::from_le_bytes([b[0], b[1]]).wrapping_add(d).to_le_bytes());
            }
        }
        _ => {
            for (i, (o, b)) in out.chunks_exact_mut(W).zip(against.chunks_exact(W)).enumerate() {
                let z = planes.iter().enumerate().fold(0u64, |z, (p, plane)| z | (plane.get(i).copied().unwrap_or(0) as u64) << (8 * p));
                let d = (z >> 1) ^ (z & 1).wrapping_neg();
                o.copy_from_slice(&(load::<W>(b).wrapping_add(d) & mask::<W>()).to_le_bytes()[..W]);
            }
        }
    }
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
            let z = zigzag::<2>(d, 0);
            let back = (z >> 1) ^ (z & 1).wrapping_neg();
            assert_eq!(back & 0xffff, d);
        }
        assert_eq!(zigzag::<4>(5, 3), 4);
        assert_eq!(zigzag::<4>(3, 5), 3);
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
