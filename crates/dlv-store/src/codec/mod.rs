//! Archival tensor codecs: byte planes of the bit patterns, exponent isolation, XOR or zigzag
//! integer deltas against a base tensor, and a per-plane stream coder chosen by measured size.
//!
//! A tensor object is a sequence of chunks of [`CHUNK_ELEMS`] elements (the last may be
//! shorter). Each chunk has a header naming its transform and, for each byte plane from the most
//! significant down, the stream coder, the stream length and a checksum of the decoded plane;
//! the streams follow in the same order, so a reader wanting only the high planes seeks past the
//! rest. See `docs/STORAGE.md` for the byte layout.

pub mod entropy;
pub mod planes;
pub mod stream;

use rayon::prelude::*;

use crate::DType;
use planes::Planes;
use stream::Coder;

/// Elements per chunk: bounds the memory of encoding and decoding (a few chunk buffers per
/// level of a delta chain) whatever the tensor size, and lets chunks be coded independently.
pub const CHUNK_ELEMS: u64 = 1 << 20;
/// In `auto` mode the integer difference is chosen over XOR only when its estimate is at least
/// this fraction smaller.
const SUB_MIN_GAIN: f64 = 0.03;
/// Elements sampled (evenly strided) to choose a chunk's transform.
const SAMPLE_ELEMS: usize = 1 << 16;
/// Largest chunk a reader accepts from a header (protects allocations from corrupt files).
pub const MAX_CHUNK_ELEMS: u64 = 1 << 24;

/// How a chunk's words relate to its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// The bit patterns themselves.
    None = 0,
    /// XOR with the base's bit patterns: the high planes depend only on the base's high planes.
    Xor = 1,
    /// Zigzag of the wrapping integer difference of the bit patterns (carries cross planes).
    Sub = 2,
}

impl Transform {
    pub fn from_byte(b: u8) -> Option<Transform> {
        Some(match b {
            0 => Transform::None,
            1 => Transform::Xor,
            2 => Transform::Sub,
            _ => return None,
        })
    }
}

/// Chunk flag: the top 16 bits of each residual word are rotated left by one.
pub const FLAG_ROTATE: u8 = 1;

/// Which delta transforms the encoder may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeltaMode {
    /// The smaller of XOR and integer difference, per chunk; the integer difference only when
    /// it is clearly (3%) smaller, since XOR keeps low-precision reads to the high planes.
    #[default]
    Auto,
    /// XOR only: every low-precision read stays a high-plane read along the whole chain.
    Xor,
    /// Integer difference only.
    Int,
    /// No deltas: every tensor is materialised.
    Off,
}

impl DeltaMode {
    pub fn parse(s: &str) -> Option<DeltaMode> {
        Some(match s {
            "auto" => DeltaMode::Auto,
            "xor" => DeltaMode::Xor,
            "int" => DeltaMode::Int,
            "off" | "none" => DeltaMode::Off,
            _ => return None,
        })
    }
}

/// Float kind of a tensor's elements, recorded in the tensor header (0 = not a float).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatKind {
    None = 0,
    F16 = 1,
    BF16 = 2,
    F32 = 3,
    F64 = 4,
}

impl FloatKind {
    pub fn from_byte(b: u8) -> Option<FloatKind> {
        Some(match b {
            0 => FloatKind::None,
            1 => FloatKind::F16,
            2 => FloatKind::BF16,
            3 => FloatKind::F32,
            4 => FloatKind::F64,
            _ => return None,
        })
    }
}

/// Element width and float kind of a tensor object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorLayout {
    pub width: usize,
    pub float: FloatKind,
}

impl TensorLayout {
    pub fn of(dtype: DType) -> TensorLayout {
        let float = match dtype {
            DType::F16 => FloatKind::F16,
            DType::BF16 => FloatKind::BF16,
            DType::F32 => FloatKind::F32,
            DType::F64 => FloatKind::F64,
            _ => FloatKind::None,
        };
        TensorLayout { width: dtype.size(), float }
    }
}

/// Storage settings from `.dlv/config.toml` (`[storage]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageConfig {
    /// Longest delta chain from any tensor object to a materialised one.
    pub max_chain: usize,
    pub delta: DeltaMode,
}

/// Default bound on delta chains.
pub const DEFAULT_MAX_CHAIN: usize = 10;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { max_chain: DEFAULT_MAX_CHAIN, delta: DeltaMode::Auto }
    }
}

impl StorageConfig {
    /// Reads `[storage]` from the repository's config; absent keys take their defaults.
    pub fn load(dot: &std::path::Path) -> crate::Result<StorageConfig> {
        let path = dot.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| crate::StoreError::io(&path, e))?;
        let bad = |msg: String| crate::StoreError::CorruptMeta { what: path.display().to_string(), msg };
        let table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut cfg = StorageConfig::default();
        if let Some(s) = table.get("storage").and_then(|v| v.as_table()) {
            if let Some(v) = s.get("max_chain") {
                let n = v.as_integer().filter(|n| (0..=1000).contains(n));
                cfg.max_chain = n.ok_or_else(|| bad("storage.max_chain must be an integer 0..=1000".into()))? as usize;
            }
            if let Some(v) = s.get("delta") {
                cfg.delta = v
                    .as_str()
                    .and_then(DeltaMode::parse)
                    .ok_or_else(|| bad("storage.delta must be \"auto\", \"xor\", \"int\" or \"off\"".into()))?;
            }
        }
        Ok(cfg)
    }
}

/// Per-plane descriptor in a chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDesc {
    pub coder: Coder,
    pub len: u64,
    pub sum: [u8; 8],
}

/// A parsed chunk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkHeader {
    pub elems: u64,
    pub transform: Transform,
    pub flags: u8,
    /// Highest plane first.
    pub streams: Vec<StreamDesc>,
}

/// Bytes of a chunk header for `width`-byte elements.
pub fn chunk_header_len(width: usize) -> usize {
    12 + 17 * width + 4
}

/// 8-byte checksum of a decoded plane (BLAKE3 prefix).
pub fn plane_sum(plane: &[u8]) -> [u8; 8] {
    let h = blake3::hash(plane);
    let mut s = [0u8; 8];
    s.copy_from_slice(&h.as_bytes()[..8]);
    s
}

impl ChunkHeader {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(chunk_header_len(self.streams.len()));
        b.extend_from_slice(&self.elems.to_le_bytes());
        b.push(self.transform as u8);
        b.push(self.flags);
        b.extend_from_slice(&[0, 0]);
        for s in &self.streams {
            b.push(s.coder as u8);
            b.extend_from_slice(&s.len.to_le_bytes());
            b.extend_from_slice(&s.sum);
        }
        let h = blake3::hash(&b);
        b.extend_from_slice(&h.as_bytes()[..4]);
        b
    }

    /// Parses and checks a header of `width`-byte elements.
    pub fn parse(b: &[u8], width: usize) -> Result<ChunkHeader, String> {
        if b.len() != chunk_header_len(width) {
            return Err("chunk header has the wrong length".into());
        }
        let (body, sum) = b.split_at(b.len() - 4);
        if blake3::hash(body).as_bytes()[..4] != *sum {
            return Err("chunk header fails its checksum".into());
        }
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&body[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let elems = u64_at(0);
        let transform = Transform::from_byte(body[8]).ok_or_else(|| format!("unknown transform {}", body[8]))?;
        let flags = body[9];
        if flags & !FLAG_ROTATE != 0 || (flags & FLAG_ROTATE != 0 && width < 2) {
            return Err(format!("unknown chunk flags {flags:#x}"));
        }
        let mut streams = Vec::with_capacity(width);
        for k in 0..width {
            let o = 12 + 17 * k;
            let coder = Coder::from_byte(body[o]).ok_or_else(|| format!("unknown stream coder {}", body[o]))?;
            let mut sum = [0u8; 8];
            sum.copy_from_slice(&body[o + 9..o + 17]);
            streams.push(StreamDesc { coder, len: u64_at(o + 1), sum });
        }
        Ok(ChunkHeader { elems, transform, flags, streams })
    }
}

/// One encoded chunk: its header and the plane streams, highest plane first.
pub struct EncodedChunk {
    pub header: ChunkHeader,
    pub streams: Vec<Vec<u8>>,
}

#[cfg(test)]
impl EncodedChunk {
    pub fn stored_len(&self) -> u64 {
        chunk_header_len(self.streams.len()) as u64 + self.streams.iter().map(|s| s.len() as u64).sum::<u64>()
    }
}

/// Residual planes of one candidate encoding.
fn residual(value: &Planes, base: Option<&Planes>, t: Transform, rotate: bool) -> Planes {
    let mut r = match (t, base) {
        (Transform::Xor, Some(b)) => {
            let mut r = value.clone();
            planes::xor_into(&mut r, b);
            r
        }
        (Transform::Sub, Some(b)) => planes::sub_zigzag(value, b),
        _ => value.clone(),
    };
    if rotate {
        planes::rotate_top(&mut r);
    }
    r
}

/// Encodes one chunk of `layout`-shaped elements (`value` as planes), choosing the transform by
/// the order-0 entropy of the residual planes (a fast, accurate proxy of the coded size) and
/// each plane's coder by the size it actually codes to. Planes are coded in parallel.
pub fn encode_chunk(value: &Planes, base: Option<&Planes>, layout: TensorLayout, mode: DeltaMode) -> EncodedChunk {
    let elems = value.first().map_or(0, Vec::len) as u64;
    let mut transforms = vec![Transform::None];
    if base.is_some() {
        match mode {
            DeltaMode::Auto => transforms.extend([Transform::Xor, Transform::Sub]),
            DeltaMode::Xor => transforms.push(Transform::Xor),
            DeltaMode::Int => transforms.push(Transform::Sub),
            DeltaMode::Off => {}
        }
    }
    let (mut best, bits) = best_candidate(value, base, layout, &transforms);
    if mode == DeltaMode::Auto && best.0 == Transform::Sub {
        // XOR keeps bf16 reads to the high planes along the whole chain; the integer
        // difference must be worth it. Measured on SGD series it saves about 2% of the size
        // while a bf16 read of XOR chains reads about a third of the bytes of a full read.
        let (other, obits) = best_candidate(value, base, layout, &[Transform::None, Transform::Xor]);
        if bits >= obits * (1.0 - SUB_MIN_GAIN) {
            best = other;
        }
    }
    let r = residual(value, base, best.0, best.1);
    let coded: Vec<(Coder, Vec<u8>, [u8; 8])> = r
        .par_iter()
        .rev()
        .map(|plane| {
            let (c, bytes) = stream::encode(plane);
            (c, bytes, plane_sum(plane))
        })
        .collect();
    let mut streams = Vec::with_capacity(coded.len());
    let mut descs = Vec::with_capacity(coded.len());
    for (coder, bytes, sum) in coded {
        descs.push(StreamDesc { coder, len: bytes.len() as u64, sum });
        streams.push(bytes);
    }
    EncodedChunk {
        header: ChunkHeader {
            elems,
            transform: best.0,
            flags: if best.1 { FLAG_ROTATE } else { 0 },
            streams: descs,
        },
        streams,
    }
}

/// The candidate (transform, rotation) with the smallest order-0 entropy of its residual planes,
/// and that entropy in bits.
fn best_candidate(value: &Planes, base: Option<&Planes>, layout: TensorLayout, transforms: &[Transform]) -> ((Transform, bool), f64) {
    // Scoring on an evenly strided sample keeps the choice cheap; the estimate is scaled back.
    let n = value.first().map_or(0, Vec::len);
    let stride = n.div_ceil(SAMPLE_ELEMS).max(1);
    let (value, base) = if stride > 1 {
        let pick = |p: &Planes| -> Planes { p.iter().map(|pl| pl.iter().step_by(stride).copied().collect()).collect() };
        (std::borrow::Cow::Owned(pick(value)), base.map(|b| std::borrow::Cow::Owned(pick(b))))
    } else {
        (std::borrow::Cow::Borrowed(value), base.map(std::borrow::Cow::Borrowed))
    };
    let sampled = value.first().map_or(0, Vec::len).max(1);
    let scale = n as f64 / sampled as f64;
    let (value, base) = (value.as_ref(), base.as_deref());
    let rotations: &[bool] = if layout.float != FloatKind::None && layout.width >= 2 { &[false, true] } else { &[false] };
    let candidates: Vec<(Transform, bool)> =
        transforms.iter().flat_map(|&t| rotations.iter().map(move |&r| (t, r))).collect();
    let scored: Vec<((Transform, bool), f64)> = candidates
        .par_iter()
        .map(|&(t, rot)| {
            let r = residual(value, base, t, rot);
            ((t, rot), scale * r.iter().map(|p| entropy::order0_bits(p)).sum::<f64>())
        })
        .collect();
    scored
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(((Transform::None, false), 0.0))
}

/// Estimated coded bytes of a chunk: materialised (`base` = `None`) or as the best delta
/// against `base`. Used by the repacker to weigh plan edges without coding them.
pub fn estimate_chunk(value: &Planes, base: Option<&Planes>, layout: TensorLayout, mode: DeltaMode) -> u64 {
    let transforms: &[Transform] = match (base, mode) {
        (None, _) | (_, DeltaMode::Off) => &[Transform::None],
        (Some(_), DeltaMode::Auto) => &[Transform::Xor, Transform::Sub],
        (Some(_), DeltaMode::Xor) => &[Transform::Xor],
        (Some(_), DeltaMode::Int) => &[Transform::Sub],
    };
    let (_, bits) = best_candidate(value, base, layout, transforms);
    (bits / 8.0).ceil() as u64 + chunk_header_len(layout.width) as u64
}

/// How many of the top planes must be decoded to give the top `keep` planes of the value.
pub fn planes_needed(h: &ChunkHeader, width: usize, keep: usize) -> usize {
    let keep = keep.min(width);
    match h.transform {
        Transform::Sub => width,
        _ if h.flags & FLAG_ROTATE != 0 => keep.max(2).min(width),
        _ => keep,
    }
}

/// Rebuilds the top `keep` value planes of a chunk from its decoded residual planes (the top
/// [`planes_needed`] ones) and, for deltas, the base's planes (the same top planes, all of
/// them for [`Transform::Sub`]). Planes below are returned empty.
pub fn combine(h: &ChunkHeader, mut r: Planes, base: Option<&Planes>, keep: usize) -> Result<Planes, String> {
    let width = r.len();
    if h.flags & FLAG_ROTATE != 0 {
        planes::unrotate_top(&mut r);
    }
    let mut v = match h.transform {
        Transform::None => r,
        Transform::Xor => {
            let b = base.ok_or("xor chunk without a base")?;
            for (pr, pb) in r.iter().zip(b) {
                if !pr.is_empty() && pr.len() != pb.len() {
                    return Err("base chunk does not match".into());
                }
            }
            planes::xor_into(&mut r, b);
            r
        }
        Transform::Sub => {
            let b = base.ok_or("difference chunk without a base")?;
            if b.iter().any(|p| p.len() != h.elems as usize) {
                return Err("base chunk does not match".into());
            }
            planes::add_unzigzag(&r, b)
        }
    };
    for p in v.iter_mut().take(width - keep.min(width)) {
        p.clear();
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
