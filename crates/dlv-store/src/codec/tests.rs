//! Codec round trips on every dtype and transform, including special float bit patterns.

use proptest::prelude::*;

use super::planes::{join_top, split};
use super::*;
use crate::testrand::XorShift;

fn roundtrip(value: &[u8], base: Option<&[u8]>, layout: TensorLayout, mode: impl Into<Encoding>) -> Result<EncodedChunk, String> {
    let w = layout.width;
    let bp = base.map(|b| split(b, w));
    let enc = encode_chunk(value, base, layout, mode.into(), 0);
    let header = ChunkHeader::parse(&enc.header.to_bytes(), w)?;
    assert_eq!(header, enc.header);
    // Full decode.
    let (mask, coded) = split_streams(&header, &enc.streams, w);
    let own = decode_residual(&header, w, mask.as_deref(), coded.clone())?;
    let full = combine(&header, own.clone(), bp.as_ref(), w)?;
    let mut out = Vec::new();
    join_top(&full, 0, &mut out);
    assert_eq!(out, value, "full decode differs ({:?})", header.transform);
    // The fused path of full reads agrees, with and without plane checks.
    for verify in [true, false] {
        let mut out = vec![7u8; 3];
        decode_chunk(&header, w, mask.as_deref(), coded.clone(), base, verify, &mut out)?;
        assert_eq!(out[..3], [7, 7, 7], "decode_chunk appends");
        assert_eq!(out[3..], *value, "fused decode differs ({:?}, verify {verify})", header.transform);
    }
    // Every partial decode from only the planes it needs equals truncation.
    for keep in 1..=w {
        let need = planes_needed(&header, w, keep);
        let wanted: Vec<_> = coded.iter().filter(|c| c.0 >= w - need).cloned().collect();
        let part = decode_residual(&header, w, mask.as_deref(), wanted)?;
        assert!(part.iter().take(w - need).all(Vec::is_empty));
        let bpart = bp.as_ref().map(|b| {
            let base_need = if matches!(header.transform, Transform::Sub | Transform::Magnitude) { w } else { need };
            let mut b = b.clone();
            for p in b.iter_mut().take(w - base_need) {
                p.clear();
            }
            b
        });
        let top = combine(&header, part, bpart.as_ref(), keep)?;
        let mut got = Vec::new();
        join_top(&top, w - keep, &mut got);
        let expect: Vec<u8> = value.chunks_exact(w).flat_map(|e| e[w - keep..].to_vec()).collect();
        assert_eq!(got, expect, "top {keep} of {w}");
    }
    Ok(enc)
}

/// The mask stream and the (plane, descriptor, bytes) of every plane, from encoded streams.
#[allow(clippy::type_complexity)]
fn split_streams(h: &ChunkHeader, streams: &[Vec<u8>], w: usize) -> (Option<Vec<u8>>, Vec<Coded<'static>>) {
    let mut it = streams.iter();
    let mask = h.mask.and_then(|_| it.next().cloned());
    let coded = h.streams.iter().zip(it).enumerate().map(|(k, (d, b))| (w - 1 - k, *d, b.clone().into())).collect();
    (mask, coded)
}

const LAYOUTS: &[(usize, FloatKind)] = &[
    (1, FloatKind::None),
    // No dtype has 3 or 6 bytes, but the object format allows any width up to 8.
    (3, FloatKind::None),
    (6, FloatKind::None),
    (2, FloatKind::F16),
    (2, FloatKind::BF16),
    (2, FloatKind::None),
    (4, FloatKind::F32),
    (4, FloatKind::None),
    (8, FloatKind::F64),
    (8, FloatKind::None),
];

fn special_f32() -> Vec<u8> {
    let vals = [
        // f64 NaN, -Inf, -0 and the smallest denormal, as (low, high) words: first, so that
        // 8-byte elements see them whole.
        0,
        0x7ff8_0000,
        0,
        0xfff0_0000,
        0,
        0x8000_0000,
        1,
        0,
        // f16 +Inf and -Inf, a negative denormal and the largest denormal, as halves.
        0xfc00_7c00,
        0x8001_03ff,
        f32::NAN.to_bits(),
        0x7fc0_1234,
        0xffff_ffff,
        f32::INFINITY.to_bits(),
        f32::NEG_INFINITY.to_bits(),
        (-0.0f32).to_bits(),
        0,
        1,
        0x8000_0001,
        0x007f_ffff,
        f32::MIN_POSITIVE.to_bits(),
        f32::MAX.to_bits(),
        1.0f32.to_bits(),
    ];
    vals.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn special_float_patterns_round_trip() -> Result<(), String> {
    let v = special_f32();
    let mut b = v.clone();
    b.reverse();
    for mode in [DeltaMode::Auto, DeltaMode::Xor, DeltaMode::Int] {
        for &(w, f) in LAYOUTS {
            let n = v.len() / w * w;
            let layout = TensorLayout { width: w, float: f, row: 0 };
            roundtrip(&v[..n], None, layout, mode)?;
            roundtrip(&v[..n], Some(&b[..n]), layout, mode)?;
        }
    }
    Ok(())
}

#[test]
fn snapshot_deltas_shrink_and_pick_a_delta() -> Result<(), String> {
    // A "training step": small relative changes of normal-ish weights.
    let mut r = XorShift::new(0x1234_5678);
    let mut rnd = move || r.unit();
    let base: Vec<f32> = (0..50_000).map(|_| ((rnd() - 0.5) * 0.1) as f32).collect();
    let next: Vec<f32> = base.iter().map(|&w| w + ((rnd() - 0.5) * 1e-4) as f32).collect();
    let (bb, nb): (Vec<u8>, Vec<u8>) = (
        base.iter().flat_map(|v| v.to_le_bytes()).collect(),
        next.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    let layout = TensorLayout { width: 4, float: FloatKind::F32, row: 0 };
    let whole = roundtrip(&nb, None, layout, DeltaMode::Auto)?;
    let delta = roundtrip(&nb, Some(&bb), layout, DeltaMode::Auto)?;
    assert_ne!(delta.header.transform, Transform::None);
    assert!(delta.stored_len() < whole.stored_len() * 9 / 10, "{} vs {}", delta.stored_len(), whole.stored_len());
    assert!(whole.stored_len() < nb.len() as u64);
    // Identical to the base: all-zero residual, nearly free.
    let same = roundtrip(&bb, Some(&bb), layout, DeltaMode::Auto)?;
    assert!(same.stored_len() < 200, "{}", same.stored_len());
    Ok(())
}

#[test]
fn sparse_deltas_use_sparse_or_small_streams() -> Result<(), String> {
    let base: Vec<u8> = (0..40_000u32).flat_map(|i| (i as f32 * 0.001).to_le_bytes()).collect();
    let mut next = base.clone();
    for i in (0..40_000).step_by(97) {
        next[i * 4] ^= 0x5a;
        next[i * 4 + 2] ^= 0x01;
    }
    let enc = roundtrip(&next, Some(&base), TensorLayout { width: 4, float: FloatKind::F32, row: 0 }, DeltaMode::Xor)?;
    assert!(enc.stored_len() < 40_000 / 4, "{}", enc.stored_len());
    assert!(enc.header.streams.iter().any(|s| s.coder == stream::Coder::Sparse || s.coder == stream::Coder::Constant));
    Ok(())
}

#[test]
fn masked_and_split_chunks_round_trip_and_shrink() -> Result<(), String> {
    // Most weights unchanged, the rest moved by a few thousand ulps: the shape of an SGD delta.
    let mut r = XorShift::new(0x9e37_79b9);
    let mut rnd = move || r.next_u64();
    let base: Vec<u32> = (0..200_000).map(|_| 0x3c00_0000 | (rnd() as u32 & 0x00ff_ffff)).collect();
    // Moves of every size up to 2^18 ulps, so the leading byte falls in different planes.
    let next: Vec<u32> = base
        .iter()
        .map(|&b| {
            let bits = rnd() % 19;
            let d = (rnd() % (1u64 << bits)) as u32;
            match rnd() % 6 {
                0 => b.wrapping_add(d),
                1 => b.wrapping_sub(d),
                _ => b,
            }
        })
        .collect();
    let bytes = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|w| w.to_le_bytes()).collect() };
    let (bb, nb) = (bytes(&base), bytes(&next));
    let layout = TensorLayout { width: 4, float: FloatKind::F32, row: 0 };
    for mode in [DeltaMode::Auto, DeltaMode::Xor, DeltaMode::Int] {
        let enc = roundtrip(&nb, Some(&bb), layout, mode)?;
        assert!(enc.header.flags & FLAG_MASK != 0, "{mode:?}: two thirds zero, so masked");
        // 1/3 of the words non-zero, about 14 significant bits each, plus the mask.
        assert!(enc.stored_len() < nb.len() as u64 / 5, "{mode:?}: {} of {}", enc.stored_len(), nb.len());
    }
    // The split coder wins on a plane whose leading bytes are small and the rest uniform.
    let enc = roundtrip(&nb, Some(&bb), layout, DeltaMode::Int)?;
    assert!(enc.header.streams.iter().any(|s| s.coder == stream::Coder::Split), "{:?}", enc.header.streams);
    Ok(())
}

#[test]
fn corrupt_streams_of_masked_chunks_are_named() -> Result<(), String> {
    let base: Vec<u8> = (0..30_000u32).flat_map(|i| (i as f32 * 0.37).sin().to_le_bytes()).collect();
    let mut next = base.clone();
    for i in (0..30_000).step_by(5) {
        next[i * 4] ^= (i % 200) as u8 | 1;
        next[i * 4 + 1] ^= (i % 7) as u8;
    }
    let layout = TensorLayout { width: 4, float: FloatKind::F32, row: 0 };
    let enc = roundtrip(&next, Some(&base), layout, Encoding { delta: DeltaMode::Int, ..FAST })?;
    assert!(enc.header.mask.is_some());
    for s in 0..enc.streams.len() {
        for pos in [0, enc.streams[s].len() / 2, enc.streams[s].len().saturating_sub(1)] {
            let mut streams = enc.streams.clone();
            if streams[s].is_empty() {
                continue;
            }
            streams[s][pos] ^= 0x24;
            let (mask, coded) = split_streams(&enc.header, &streams, 4);
            let err = match decode_residual(&enc.header, 4, mask.as_deref(), coded) {
                Err(e) => e,
                Ok(_) => return Err(format!("stream {s} byte {pos}: corruption not detected")),
            };
            assert!(err.contains("plane") || err.contains("mask"), "{err}");
        }
    }
    Ok(())
}

#[test]
fn corrupt_headers_are_refused() {
    let layout = TensorLayout { width: 4, float: FloatKind::F32, row: 0 };
    let enc = encode_chunk(&special_f32(), None, layout, DeltaMode::Auto.into(), 0);
    let bytes = enc.header.to_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        assert!(ChunkHeader::parse(&b, 4).is_err(), "flip at {i}");
    }
    assert!(ChunkHeader::parse(&bytes[..bytes.len() - 1], 4).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn any_bits_round_trip(
        layout_i in 0..LAYOUTS.len(),
        value in proptest::collection::vec(any::<u8>(), 0..600),
        noise in proptest::collection::vec(any::<u8>(), 0..600),
        sparse in any::<bool>(),
        mode_i in 0..3usize,
    ) {
        let (w, f) = LAYOUTS[layout_i];
        let n = value.len() / w * w;
        let v = &value[..n];
        // A base close to the value (sparse flips) or unrelated (noise).
        let base: Vec<u8> = if sparse {
            v.iter().enumerate().map(|(i, &b)| if noise.get(i).copied().unwrap_or(0) % 7 == 0 { b ^ 1 } else { b }).collect()
        } else {
            (0..n).map(|i| noise.get(i).copied().unwrap_or(i as u8)).collect()
        };
        let mode = [DeltaMode::Auto, DeltaMode::Xor, DeltaMode::Int][mode_i];
        let layout = TensorLayout { width: w, float: f, row: 0 };
        prop_assert!(roundtrip(v, None, layout, mode).is_ok());
        prop_assert!(roundtrip(v, Some(&base), layout, mode).is_ok());
    }

    #[test]
    fn floats_round_trip(values in proptest::collection::vec(any::<u32>(), 1..300), drift in any::<u32>()) {
        let v: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let b: Vec<u8> = values.iter().map(|x| x.wrapping_add(drift % 1000)).flat_map(|x| x.to_le_bytes()).collect();
        let layout = TensorLayout { width: 4, float: FloatKind::F32, row: 0 };
        prop_assert!(roundtrip(&v, Some(&b), layout, DeltaMode::Auto).is_ok());
        prop_assert!(roundtrip(&v, Some(&b), layout, DeltaMode::Int).is_ok());
    }
}

/// Full decodes skip the plane checksums and check the value's hash; a mismatch is then traced
/// to the plane that fails its checksum.
#[test]
fn full_decode_names_a_corrupt_plane() {
    let layout = TensorLayout::of(crate::DType::F32);
    let value: Vec<u8> = (0..50_000u32).flat_map(|i| (i as f32 * 0.37).sin().to_le_bytes()).collect();
    let mut t = encode_tensor(&value, None, layout, DeltaMode::Auto.into());
    assert_eq!(decode_tensor(&t, None).as_deref(), Ok(value.as_slice()));
    // The lowest plane holds near-random mantissa bits: stored, so a flip decodes silently.
    assert_eq!(t.chunks[0].header.streams[3].coder, Coder::Stored);
    if let Some(s) = t.chunks[0].streams.last_mut() {
        s[100] ^= 0x10;
    }
    match decode_tensor(&t, None) {
        Err(e) => assert!(e.contains("plane 0") && e.contains("checksum"), "{e}"),
        Ok(_) => panic!("a corrupt plane decoded"),
    }
}

/// Aligned inputs are read as whole words, others byte by byte: both code the same.
#[test]
fn unaligned_input_codes_the_same() -> Result<(), String> {
    for dtype in [crate::DType::BF16, crate::DType::F32] {
        let layout = TensorLayout::of(dtype);
        let w = layout.width;
        let n = 30_000usize;
        let base: Vec<u8> = (0..n).flat_map(|i| ((i as f32 * 0.01).cos().to_bits() >> (32 - 8 * w as u32)).to_le_bytes()[..w].to_vec()).collect();
        let value: Vec<u8> = base.chunks_exact(w).enumerate().flat_map(|(i, e)| {
            let x = e.iter().rev().fold(0u32, |a, &b| (a << 8) | b as u32).wrapping_add((i % 5) as u32);
            x.to_le_bytes()[..w].to_vec()
        }).collect();
        let shifted = |b: &[u8]| {
            let mut v = vec![0u8; b.len() + 1];
            v[1..].copy_from_slice(b);
            v
        };
        let (sv, sb) = (shifted(&value), shifted(&base));
        for b in [None, Some(base.as_slice())] {
            let aligned = encode_chunk(&value, b, layout, DeltaMode::Auto.into(), 0);
            let odd = encode_chunk(&sv[1..], b.map(|_| &sb[1..]), layout, DeltaMode::Auto.into(), 0);
            assert_eq!(aligned.header, odd.header, "{dtype:?}");
            assert_eq!(aligned.streams, odd.streams, "{dtype:?}");
            roundtrip(&sv[1..], b.map(|_| &sb[1..]), layout, DeltaMode::Auto)?;
        }
    }
    Ok(())
}

const MAX: Encoding = Encoding { delta: DeltaMode::Auto, compression: Compression::Max };
const FAST: Encoding = Encoding { delta: DeltaMode::Auto, compression: Compression::Fast };
const BALANCED: Encoding = Encoding { delta: DeltaMode::Auto, compression: Compression::Balanced };

/// A training-like step on a `rows` x `cols` layer of `kind`: weights of mixed sizes, each row
/// moving with its own scale and mostly one way, every fourth row not at all; with `rank`, the
/// change is instead a sum of `rank` outer products.
fn layer_step(kind: FloatKind, rows: usize, cols: usize, rank: usize) -> (Vec<u8>, Vec<u8>) {
    let mut r = XorShift::new(0x2545_f491_4f6c_dd1d);
    let mut rnd = move || r.unit();
    let w: Vec<f64> = (0..rows * cols).map(|_| (rnd() - 0.5) * 0.2).collect();
    let us: Vec<f64> = (0..rows * rank).map(|_| rnd() - 0.5).collect();
    let vs: Vec<f64> = (0..rank * cols).map(|_| rnd() - 0.5).collect();
    let scale: Vec<f64> = (0..rows).map(|r| if r % 4 == 3 { 0.0 } else { 1e-4 * (1.0 + 9.0 * rnd()) }).collect();
    let put = |v: f64, out: &mut Vec<u8>| match kind {
        FloatKind::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
        FloatKind::BF16 => out.extend_from_slice(&(((v as f32).to_bits() + 0x8000) >> 16).to_le_bytes()[..2]),
        _ => out.extend_from_slice(&half_bits(v as f32).to_le_bytes()),
    };
    let (mut base, mut next) = (Vec::new(), Vec::new());
    for r in 0..rows {
        for c in 0..cols {
            let d = if rank > 0 {
                (0..rank).map(|k| us[r * rank + k] * vs[k * cols + c]).sum::<f64>() * 2e-2
            } else {
                scale[r] * (rnd() - 0.2) * 20.0
            };
            put(w[r * cols + c], &mut base);
            put(w[r * cols + c] + d, &mut next);
        }
    }
    (base, next)
}

/// f16 bits of a small normal f32 (truncating; enough for test data).
fn half_bits(f: f32) -> u16 {
    let b = f.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let e = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if e <= 0 {
        return sign;
    }
    sign | ((e as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

#[test]
fn max_compression_codes_float_deltas_smaller_with_the_magnitude_coder() -> Result<(), String> {
    for (kind, w) in [(FloatKind::BF16, 2), (FloatKind::F16, 2), (FloatKind::F32, 4)] {
        let (base, next) = layer_step(kind, 64, 256, 0);
        let layout = TensorLayout { width: w, float: kind, row: 256 };
        let fast = roundtrip(&next, Some(&base), layout, FAST)?;
        let max = roundtrip(&next, Some(&base), layout, MAX)?;
        assert_eq!(max.header.transform, Transform::Magnitude, "{kind:?}");
        assert!(max.stored_len() < fast.stored_len() * 98 / 100, "{kind:?}: {} against {}", max.stored_len(), fast.stored_len());
        // Two-byte floats are coded as class planes (format 3, after the float kind).
        if w == 2 {
            assert_eq!(max.streams[0].get(1), Some(&3), "{kind:?}");
        }
        // Only where the integer difference is allowed, only against a base.
        let xor = roundtrip(&next, Some(&base), layout, Encoding { delta: DeltaMode::Xor, ..MAX })?;
        assert_ne!(xor.header.transform, Transform::Magnitude);
        assert_ne!(roundtrip(&next, None, layout, MAX)?.header.transform, Transform::Magnitude);
    }
    // Integers never.
    let (base, next) = layer_step(FloatKind::F32, 64, 256, 0);
    let ints = roundtrip(&next, Some(&base), TensorLayout { width: 4, float: FloatKind::None, row: 256 }, MAX)?;
    assert_ne!(ints.header.transform, Transform::Magnitude);
    // Nor a layout whose float kind does not match its width: byte planes, which round-trip.
    let odd = roundtrip(&next, Some(&base), TensorLayout { width: 2, float: FloatKind::F32, row: 256 }, MAX)?;
    assert_ne!(odd.header.transform, Transform::Magnitude);
    Ok(())
}

/// The default level: for 2-byte floats, class planes where few elements changed and (bf16)
/// residual planes against a low-rank prediction where most did and the layer is narrow; wider
/// floats and integers as byte planes, exactly as at `Fast`.
#[test]
fn balanced_compression_takes_the_magnitude_coder_where_it_pays() -> Result<(), String> {
    assert_eq!(Encoding::default(), BALANCED);
    for (kind, w) in [(FloatKind::BF16, 2), (FloatKind::F16, 2)] {
        // A sparse step, as in a low-precision series: most large weights keep their value
        // (the step is under half a unit in their last place), small ones move.
        let (base, mut next) = layer_step(kind, 64, 256, 0);
        let mut r = XorShift::new(11);
        for (n, b) in next.chunks_exact_mut(w).zip(base.chunks_exact(w)) {
            let exponent = match kind {
                FloatKind::BF16 => (u16::from_le_bytes([b[0], b[1]]) >> 7) & 0xff,
                _ => ((u16::from_le_bytes([b[0], b[1]]) >> 10) & 0x1f) + 112,
            };
            if exponent >= 121 || r.unit() < 0.2 {
                n.copy_from_slice(b);
            }
        }
        let layout = TensorLayout { width: w, float: kind, row: 256 };
        let fast = roundtrip(&next, Some(&base), layout, FAST)?;
        let balanced = roundtrip(&next, Some(&base), layout, BALANCED)?;
        assert_ne!(fast.header.transform, Transform::Magnitude, "{kind:?}");
        // Class planes where they are smaller (here for bf16; fp16's longer mantissa moves more
        // units in the last place, and its byte planes stay smaller).
        assert!(balanced.stored_len() <= fast.stored_len(), "{kind:?}: {} against {}", balanced.stored_len(), fast.stored_len());
        if kind == FloatKind::BF16 {
            assert_eq!(balanced.header.transform, Transform::Magnitude);
            assert_eq!(balanced.streams[0].get(1), Some(&3), "class planes");
            assert!(balanced.stored_len() < fast.stored_len());
        }
    }
    // A dense change of low rank on a narrow layer: the low-rank block, residual planes after it.
    let (base, next) = layer_step(FloatKind::BF16, 512, 48, 3);
    let layout = TensorLayout { width: 2, float: FloatKind::BF16, row: 48 };
    let fast = roundtrip(&next, Some(&base), layout, FAST)?;
    let balanced = roundtrip(&next, Some(&base), layout, BALANCED)?;
    assert_eq!(balanced.streams[0][..2], [FloatKind::BF16 as u8, 2]);
    let block = u32::from_le_bytes([balanced.streams[0][7], balanced.streams[0][8], balanced.streams[0][9], balanced.streams[0][10]]) as usize;
    assert_eq!(balanced.streams[0].get(2 + super::lowrank::HEAD + block), Some(&4), "residual planes after the block");
    assert!(balanced.stored_len() * 10 < fast.stored_len() * 8, "{} against {}", balanced.stored_len(), fast.stored_len());
    // The same dense change on a wide layer has no prediction: byte planes.
    let wide = roundtrip(&next, Some(&base), TensorLayout { width: 2, float: FloatKind::BF16, row: 0 }, BALANCED)?;
    assert_ne!(wide.header.transform, Transform::Magnitude);
    // fp32 and integers: byte planes, the same bytes as at `Fast`.
    let (base, next) = layer_step(FloatKind::F32, 64, 256, 0);
    for float in [FloatKind::F32, FloatKind::None] {
        let layout = TensorLayout { width: 4, float, row: 256 };
        let (fast, balanced) = (roundtrip(&next, Some(&base), layout, FAST)?, roundtrip(&next, Some(&base), layout, BALANCED)?);
        assert_eq!((fast.header, fast.streams), (balanced.header, balanced.streams), "{float:?}");
    }
    Ok(())
}

#[test]
fn low_rank_changes_are_predicted() -> Result<(), String> {
    for (kind, w) in [(FloatKind::BF16, 2), (FloatKind::F32, 4)] {
        let (base, next) = layer_step(kind, 512, 48, 3);
        let plain = roundtrip(&next, Some(&base), TensorLayout { width: w, float: kind, row: 0 }, MAX)?;
        let rows = roundtrip(&next, Some(&base), TensorLayout { width: w, float: kind, row: 48 }, MAX)?;
        assert_eq!(rows.header.transform, Transform::Magnitude);
        // The float kind, then the low-rank format.
        assert_eq!(rows.streams[0][..2], [kind as u8, 2], "{kind:?}");
        assert!(rows.stored_len() * 10 < plain.stored_len() * 8, "{kind:?}: {} against {}", rows.stored_len(), plain.stored_len());
        // The same stream claiming another float kind (fp16 has no low-rank prediction, fp32
        // another width) is an error, not a panic, also unchecked.
        for forged_kind in [FloatKind::F16, FloatKind::F32, FloatKind::BF16] {
            if forged_kind == kind {
                continue;
            }
            let mut forged = rows.streams[0].clone();
            forged[0] = forged_kind as u8;
            let coded = vec![(w - 1, rows.header.streams[0], forged.into())];
            let mut out = Vec::new();
            assert!(decode_chunk(&rows.header, w, None, coded, Some(&base), false, &mut out).is_err(), "{kind:?} as {forged_kind:?}");
        }
    }
    Ok(())
}

#[test]
fn magnitude_chunks_keep_special_patterns_and_name_corruption() -> Result<(), String> {
    let v = special_f32();
    let mut b = v.clone();
    b.reverse();
    for (w, f) in [(4, FloatKind::F32), (2, FloatKind::BF16), (2, FloatKind::F16)] {
        roundtrip(&v, Some(&b), TensorLayout { width: w, float: f, row: 3 }, MAX)?;
    }
    let (base, next) = layer_step(FloatKind::BF16, 64, 256, 0);
    let enc = roundtrip(&next, Some(&base), TensorLayout { width: 2, float: FloatKind::BF16, row: 256 }, MAX)?;
    assert_eq!(enc.header.transform, Transform::Magnitude);
    let len = enc.streams[0].len();
    for at in [0, 1, 5, len / 2, len - 1] {
        let mut bad = enc.streams[0].clone();
        bad[at] ^= 0x10;
        let coded = vec![(1usize, enc.header.streams[0], bad.clone().into())];
        let mut out = Vec::new();
        let err = decode_chunk(&enc.header, 2, None, coded.clone(), Some(&base), true, &mut out).err().unwrap_or_default();
        assert!(err.contains("plane 1: magnitude stream fails its checksum"), "byte {at}: {err}");
        // Unchecked, it is an error or a different value (which the object id catches).
        let mut out = Vec::new();
        if decode_chunk(&enc.header, 2, None, coded, Some(&base), false, &mut out).is_ok() {
            assert_ne!(out, next, "byte {at}");
        }
    }
    // A magnitude chunk needs its base, of the right length.
    let coded = vec![(1usize, enc.header.streams[0], enc.streams[0].clone().into())];
    let mut out = Vec::new();
    assert!(decode_chunk(&enc.header, 2, None, coded.clone(), None, true, &mut out).is_err());
    assert!(decode_chunk(&enc.header, 2, None, coded, Some(&base[2..]), true, &mut out).is_err());
    Ok(())
}

#[test]
fn storage_settings_are_read_and_bad_ones_named() -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let write = |body: &str| std::fs::write(tmp.path().join("config.toml"), format!("format = 1\n[storage]\n{body}\n")).map_err(|e| e.to_string());
    write("compression = \"max\"\ndelta = \"int\"\nmax_chain = 4")?;
    let cfg = StorageConfig::load(tmp.path()).map_err(|e| e.to_string())?;
    assert_eq!(cfg.encoding(), Encoding { delta: DeltaMode::Int, compression: Compression::Max });
    assert_eq!(cfg.max_chain, 4);
    write("")?;
    assert_eq!(StorageConfig::load(tmp.path()).map_err(|e| e.to_string())?.compression, Compression::Balanced);
    for (name, level) in [("fast", Compression::Fast), ("balanced", Compression::Balanced)] {
        write(&format!("compression = \"{name}\""))?;
        assert_eq!(StorageConfig::load(tmp.path()).map_err(|e| e.to_string())?.compression, level);
    }
    for (body, key) in [("compression = \"ultra\"", "storage.compression"), ("compression = 3", "storage.compression"), ("delta = \"sub\"", "storage.delta")] {
        write(body)?;
        let err = StorageConfig::load(tmp.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(key) && err.contains("config.toml"), "{body}: {err}");
    }
    Ok(())
}

/// A tensor of more than one chunk whose rows do not divide the chunk size, at the archival
/// level: every chunk round-trips, the later ones starting inside a row.
#[test]
fn max_compression_tensors_span_chunks_with_rows_across_them() -> Result<(), String> {
    let cols = 768;
    let rows = (CHUNK_ELEMS as usize + 5000).div_ceil(cols);
    let (base, next) = layer_step(FloatKind::BF16, rows, cols, 0);
    let layout = TensorLayout { width: 2, float: FloatKind::BF16, row: cols };
    let enc = encode_tensor(&next, Some(&base), layout, MAX);
    assert_eq!(enc.chunks.len(), 2);
    assert!(enc.chunks.iter().all(|c| c.header.transform == Transform::Magnitude));
    assert_eq!(decode_tensor(&enc, Some(&base))?, next);
    Ok(())
}

#[test]
fn changed_two_byte_elements_are_counted() {
    for n in [0usize, 1, 3, 4, 5, 17, 1000] {
        let base: Vec<u8> = (0..2 * n).map(|i| (i * 7 + 3) as u8).collect();
        let mut value = base.clone();
        let mut want = 0;
        for e in 0..n {
            // Changes in the low byte, the high byte (sign bit included) or both.
            let flip = match e % 5 {
                0 => Some((2 * e, 1u8)),
                1 => Some((2 * e + 1, 0x80)),
                3 => Some((2 * e + 1, 0x01)),
                _ => None,
            };
            if let Some((at, bit)) = flip {
                value[at] ^= bit;
                want += 1;
            }
        }
        assert_eq!(super::changed_2(&value, &base), want, "n {n}");
    }
    // The sparse test: a sample decides far from the share, every element is counted near it.
    let n = 1 << 16;
    let base = vec![0u8; 2 * n];
    for (percent, sparse) in [(0, true), (10, true), (49, true), (50, true), (51, false), (90, false), (100, false)] {
        let value: Vec<u8> = (0..n).flat_map(|i| if i * 7919 % 100 < percent { [1u8, 0] } else { [0, 0] }).collect();
        assert_eq!(super::sparse_2(&value, &base), sparse, "{percent}%");
    }
    // Every element changed, across the counter's blocks of 65,535 words: no lane overflows.
    for n in [4 * 0xffff, 4 * 0xffff + 9, 8 * 0xffff + 4] {
        let base = vec![0u8; 2 * n];
        let value = vec![0x80u8; 2 * n];
        assert_eq!(super::changed_2(&value, &base), n, "n {n}");
    }
}
