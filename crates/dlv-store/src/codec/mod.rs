//! Archival tensor codecs: byte planes of the bit patterns, exponent isolation, XOR or zigzag
//! integer deltas against a base tensor, and a per-plane stream coder chosen by measured size.
//!
//! A tensor object is a sequence of chunks of [`CHUNK_ELEMS`] elements (the last may be
//! shorter). Each chunk has a header naming its transform and, for each byte plane from the most
//! significant down, the stream coder, the stream length and a checksum of the decoded plane;
//! the streams follow in the same order, so a reader wanting only the high planes seeks past the
//! rest. A delta chunk of floats may instead hold one stream of the magnitude coder
//! ([`magnitude`]), where the compression level ([`Compression`]) allows it and it is smaller.
//! See `docs/STORAGE.md` for the byte layout.

mod classes;
mod residual;
mod simd;
pub mod entropy;
pub mod lowrank;
pub mod magnitude;
pub mod planes;
pub mod rans;
pub mod stream;

use rayon::prelude::*;

use crate::DType;
use planes::Planes;
use stream::Coder;

/// Elements per chunk: bounds the memory of encoding and decoding (a few chunk buffers per
/// level of a delta chain) whatever the tensor size, and lets chunks be coded independently.
pub const CHUNK_ELEMS: u64 = 1 << 20;
/// Elements sampled (evenly strided) to choose a chunk's transform.
const SAMPLE_ELEMS: usize = 1 << 14;
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
    /// The magnitude coder (see [`magnitude`]): one stream, the float kind (u8) then the
    /// coder's stream, decodable only with the base. Written at [`Compression::Balanced`]
    /// and [`Compression::Max`].
    Magnitude = 3,
}

impl Transform {
    pub fn from_byte(b: u8) -> Option<Transform> {
        Some(match b {
            0 => Transform::None,
            1 => Transform::Xor,
            2 => Transform::Sub,
            3 => Transform::Magnitude,
            _ => return None,
        })
    }
}

/// Chunk flag: the top 16 bits of each residual word are rotated left by one.
pub const FLAG_ROTATE: u8 = 1;
/// Chunk flag: a bitmap of the elements whose residual word is non-zero comes first (its own
/// stream) and the planes hold only those elements.
pub const FLAG_MASK: u8 = 2;
/// A plane is coded split by its context only if the order-0 estimate of the split is below
/// this fraction of the whole plane's; below [`SPLIT_SURE`] the whole plane is not coded at all
/// (coding both costs encoder time, and at that margin the split won every time measured).
const SPLIT_MAYBE: f64 = 0.99;
const SPLIT_SURE: f64 = 0.90;
/// A chunk is masked when at least this fraction of its residual words is zero.
const MASK_MIN_ZEROS: usize = 16;

/// Which delta transforms the encoder may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeltaMode {
    /// The smaller of XOR and integer difference, per chunk (the integer difference usually
    /// is; its chains need full reads at low precision, see `Xor`).
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

/// How hard the encoder works for size (`storage.compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Byte planes with a stream coder per plane: the fastest to code and decode.
    Fast,
    /// Byte planes, and for deltas of 2-byte floats (bf16, f16) the magnitude coder where it
    /// pays: class planes where at most half the elements changed; for bf16, residual planes
    /// against a low-rank prediction where more did, the tensor's rows are known and it has a
    /// narrow side. The benchmark's
    /// bf16 series 6.0x against 5.5x with `Fast`, at 0.93x its encode and 0.86x its decode
    /// speed; wider floats are coded as with `Fast`.
    #[default]
    Balanced,
    /// Byte planes, and for deltas of 2- and 4-byte floats also the magnitude coder's formats
    /// (contexts from the base and the row, low-rank prediction), kept where smaller.
    /// Smallest (bf16 6.15x in the benchmark); encodes at 0.4-0.75x and decodes at 0.7-0.8x
    /// the speed of `Fast`.
    Max,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Compression> {
        Some(match s {
            "fast" => Compression::Fast,
            "balanced" => Compression::Balanced,
            "max" => Compression::Max,
            _ => return None,
        })
    }
}

/// What the encoder may do: which delta transforms, and how hard it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encoding {
    pub delta: DeltaMode,
    pub compression: Compression,
}

impl From<DeltaMode> for Encoding {
    fn from(delta: DeltaMode) -> Self {
        Encoding { delta, compression: Compression::default() }
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
    /// Elements per row (the last dimension) where the writer knows the shape, else 0: a hint
    /// for the magnitude coder's segments and low-rank prediction, not stored.
    pub row: usize,
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
        TensorLayout { width: dtype.size(), float, row: 0 }
    }

    /// [`TensorLayout::of`] with the row length of a tensor of `shape`.
    pub fn for_shape(dtype: DType, shape: &[usize]) -> TensorLayout {
        TensorLayout { row: shape.last().copied().unwrap_or(1), ..TensorLayout::of(dtype) }
    }
}

/// Storage settings from `.dlv/config.toml` (`[storage]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageConfig {
    /// Longest delta chain from any tensor object to a materialised one.
    pub max_chain: usize,
    pub delta: DeltaMode,
    /// Reverse deltas: the newest version of a series is stored whole and its parent re-coded
    /// against it.
    pub reverse: bool,
    pub compression: Compression,
}

/// Default bound on delta chains.
pub const DEFAULT_MAX_CHAIN: usize = 10;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { max_chain: DEFAULT_MAX_CHAIN, delta: DeltaMode::Auto, reverse: true, compression: Compression::default() }
    }
}

impl StorageConfig {
    /// What the encoder may do under this configuration.
    pub fn encoding(&self) -> Encoding {
        Encoding { delta: self.delta, compression: self.compression }
    }

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
            if let Some(v) = s.get("reverse") {
                cfg.reverse = v.as_bool().ok_or_else(|| bad("storage.reverse must be true or false".into()))?;
            }
            if let Some(v) = s.get("delta") {
                cfg.delta = v
                    .as_str()
                    .and_then(DeltaMode::parse)
                    .ok_or_else(|| bad("storage.delta must be \"auto\", \"xor\", \"int\" or \"off\"".into()))?;
            }
            if let Some(v) = s.get("compression") {
                cfg.compression = v
                    .as_str()
                    .and_then(Compression::parse)
                    .ok_or_else(|| bad("storage.compression must be \"fast\", \"balanced\" or \"max\"".into()))?;
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
    /// The non-zero bitmap's stream ([`FLAG_MASK`]); it comes before the planes.
    pub mask: Option<StreamDesc>,
    /// Highest plane first.
    pub streams: Vec<StreamDesc>,
}

/// Bytes of the fixed start of a chunk header (element count, transform, flags).
pub const CHUNK_PREFIX_LEN: usize = 12;

/// Streams of a chunk: one per plane (and the mask's), or the magnitude coder's one.
fn stream_count(width: usize, flags: u8, transform: u8) -> usize {
    if transform == Transform::Magnitude as u8 {
        return 1;
    }
    width + usize::from(flags & FLAG_MASK != 0)
}

/// Bytes of a chunk header with `streams` stream descriptors.
pub fn chunk_header_len(streams: usize) -> usize {
    CHUNK_PREFIX_LEN + 17 * streams + 4
}

/// The whole header length, from its fixed start (which carries the transform and the flags).
pub fn chunk_header_len_from_prefix(prefix: &[u8], width: usize) -> Result<usize, String> {
    let (Some(&transform), Some(&flags)) = (prefix.get(8), prefix.get(9)) else { return Err("chunk header is truncated".into()) };
    check_flags(flags, width, transform)?;
    Ok(chunk_header_len(stream_count(width, flags, transform)))
}

fn check_flags(flags: u8, width: usize, transform: u8) -> Result<(), String> {
    if flags & !(FLAG_ROTATE | FLAG_MASK) != 0 || (flags & FLAG_ROTATE != 0 && width < 2) || (transform == Transform::Magnitude as u8 && flags != 0) {
        return Err(format!("unknown chunk flags {flags:#x}"));
    }
    Ok(())
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
        let mut b = Vec::with_capacity(chunk_header_len(self.streams.len() + usize::from(self.mask.is_some())));
        b.extend_from_slice(&self.elems.to_le_bytes());
        b.push(self.transform as u8);
        b.push(self.flags);
        b.extend_from_slice(&[0, 0]);
        for s in self.mask.iter().chain(&self.streams) {
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
        if b.len() < CHUNK_PREFIX_LEN || b.len() != chunk_header_len(stream_count(width, b[9], b[8])) {
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
        check_flags(flags, width, body[8])?;
        let masked = flags & FLAG_MASK != 0;
        let count = stream_count(width, flags, body[8]);
        let mut streams = Vec::with_capacity(count);
        for k in 0..count {
            let o = CHUNK_PREFIX_LEN + 17 * k;
            let coder = Coder::from_byte(body[o]).ok_or_else(|| format!("unknown stream coder {}", body[o]))?;
            let mut sum = [0u8; 8];
            sum.copy_from_slice(&body[o + 9..o + 17]);
            streams.push(StreamDesc { coder, len: u64_at(o + 1), sum });
        }
        let mask = if masked { Some(streams.remove(0)) } else { None };
        if mask.is_some_and(|m| m.coder == Coder::Split) || streams.first().is_some_and(|s| s.coder == Coder::Split) {
            return Err("the mask and the top plane cannot be split".into());
        }
        if streams.iter().any(|s| (s.coder == Coder::Magnitude) != (transform == Transform::Magnitude)) {
            return Err("a magnitude stream outside a magnitude chunk, or the other way round".into());
        }
        Ok(ChunkHeader { elems, transform, flags, mask, streams })
    }
}

/// One encoded chunk: its header and its streams in file order (the mask's, then the planes
/// highest first).
pub struct EncodedChunk {
    pub header: ChunkHeader,
    pub streams: Vec<Vec<u8>>,
}

impl EncodedChunk {
    pub fn stored_len(&self) -> u64 {
        chunk_header_len(self.streams.len()) as u64
            + self.streams.iter().map(|s| s.len() as u64).sum::<u64>()
    }
}

/// Encodes one chunk of `layout`-shaped elements (`value` as planes), choosing the transform by
/// the order-0 entropy of the residual planes (a fast, accurate proxy of the coded size) and
/// each plane's coder by the size it actually codes to. Planes are coded in parallel.
/// The chunk starts at element `offset` of its tensor: the magnitude coder aligns its segments
/// to the tensor's rows.
pub fn encode_chunk(value: &[u8], base: Option<&[u8]>, layout: TensorLayout, enc: Encoding, offset: u64) -> EncodedChunk {
    let magnitude_allowed = matches!(enc.delta, DeltaMode::Auto | DeltaMode::Int);
    let fits = magnitude::supports(layout.float) && magnitude::width_of(layout.float) == layout.width;
    let planes = |base: Option<&[u8]>| encode_planes(value, base, layout, plane_candidate(value, base, layout, enc.delta, SAMPLE_ELEMS).0);
    let Some(base) = base.filter(|b| magnitude_allowed && fits && b.len() == value.len()) else {
        return planes(base);
    };
    let m = match enc.compression {
        Compression::Fast => None,
        Compression::Balanced => encode_balanced_delta(value, base, layout, offset),
        Compression::Max => encode_max_delta(value, base, layout, offset),
    };
    let Some(m) = m else { return planes(Some(base)) };
    // Byte planes are coded too unless their estimate (order-0, sampled) is clearly larger. At
    // `Balanced` a quarter of the sample decides (the estimate then only gates the planes).
    let sample = if enc.compression == Compression::Balanced { SAMPLE_ELEMS / 4 } else { SAMPLE_ELEMS };
    let (best, bits) = plane_candidate(value, Some(base), layout, enc.delta, sample);
    if (m.stored_len() as f64) < PLANES_SKIP * bits / 8.0 {
        return m;
    }
    let best = if sample == SAMPLE_ELEMS { best } else { plane_candidate(value, Some(base), layout, enc.delta, SAMPLE_ELEMS).0 };
    let planes = encode_planes(value, Some(base), layout, best);
    if m.stored_len() < planes.stored_len() {
        m
    } else {
        planes
    }
}

/// [`Compression::Balanced`]'s magnitude candidate for a delta of 2-byte floats: class planes
/// where at most [`SPARSE_AT`] of the elements changed; where more did, residual planes
/// against a low-rank prediction if one fits the tensor's rows (`None` otherwise: plain byte
/// planes code a dense delta as small as class planes, at twice their decoding speed). Wider
/// floats are left to byte planes: the magnitude coder gains about 1% on the benchmark's fp32
/// series, at 0.7x the speed.
fn encode_balanced_delta(value: &[u8], base: &[u8], layout: TensorLayout, offset: u64) -> Option<EncodedChunk> {
    if layout.width != 2 {
        return None;
    }
    let n = value.len() / 2;
    let (row, off) = magnitude_rows(layout, offset);
    let (format, against) = if sparse_2(value, base) {
        (magnitude::Format::Classes, magnitude::Against::Base)
    } else if layout.row > 0 {
        // The fit declines a tensor without a narrow side, or a chunk that starts inside a row.
        (magnitude::Format::Planes, magnitude::Against::Prediction)
    } else {
        return None;
    };
    let coded = magnitude::encode_one(value, base, layout.float, (row, off), format, against)?;
    Some(magnitude_chunk(coded, layout.float, n as u64))
}

/// Whether at most [`SPARSE_AT`] of the two-byte elements of `value` differ from `base` (equal
/// lengths). A strided sample (one 1 KiB run in 16) decides unless it is within
/// [`SPARSE_MARGIN`] of the share; then every element is counted.
fn sparse_2(value: &[u8], base: &[u8]) -> bool {
    const RUN: usize = 1024;
    let n = value.len() / 2;
    if value.len() >= 64 * RUN {
        let (mut changed, mut seen) = (0usize, 0usize);
        for (v, b) in value.chunks_exact(RUN).zip(base.chunks_exact(RUN)).step_by(16) {
            changed += changed_2(v, b);
            seen += RUN / 2;
        }
        let share = changed as f64 / seen as f64;
        if (share - SPARSE_AT).abs() > SPARSE_MARGIN {
            return share < SPARSE_AT;
        }
    }
    changed_2(value, base) as f64 <= SPARSE_AT * n as f64
}

/// See [`sparse_2`]. In the benchmark's bf16 series the share of the larger tensors is
/// 15-50% or 97-99%: only the two near the line (47% and 50%) may need the full count.
const SPARSE_MARGIN: f64 = 0.05;

/// Two-byte elements whose bit pattern differs between `value` and `base` (equal lengths),
/// four per 8-byte word.
fn changed_2(value: &[u8], base: &[u8]) -> usize {
    const LOW: u64 = 0x7fff_7fff_7fff_7fff;
    // Words per block: each 16-bit lane of a block's sum counts at most this many.
    const BLOCK: usize = 0xffff;
    let (v8, b8) = (value.chunks_exact(8), base.chunks_exact(8));
    let tail = v8.remainder().chunks_exact(2).zip(b8.remainder().chunks_exact(2)).filter(|(v, b)| v != b).count();
    let word = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    // Lane sums instead of a bit count per word: baseline x86-64 has no POPCNT, and the
    // software count cost more than the rest of the loop.
    let mut changed = tail;
    let whole = value.len().min(base.len()) / 8 * 8;
    for (vb, bb) in value[..whole].chunks(8 * BLOCK).zip(base[..whole].chunks(8 * BLOCK)) {
        let sum = vb.chunks_exact(8).zip(bb.chunks_exact(8)).fold(0u64, |acc, (v, b)| {
            let x = word(v) ^ word(b);
            // Bit 15 of each 16-bit lane: whether the lane is non-zero (no carry leaves a lane).
            acc + (((((x & LOW) + LOW) | x) & !LOW) >> 15)
        });
        changed += (0..4).map(|k| (sum >> (16 * k)) as usize & 0xffff).sum::<usize>();
    }
    changed
}

/// At [`Compression::Max`]: class planes and (for floats wider than two bytes) symbols, each
/// against the base or the low-rank prediction; the smallest.
fn encode_max_delta(value: &[u8], base: &[u8], layout: TensorLayout, offset: u64) -> Option<EncodedChunk> {
    let mut ms = encode_magnitude(value, base, layout, offset).into_iter();
    let (classes, symbols) = (ms.next().flatten(), ms.next().flatten());
    // Class planes decode faster than symbols (twice as fast on the benchmark's later deltas):
    // they are kept unless symbols are smaller by more than CLASSES_SLACK.
    match (classes, symbols) {
        (Some(c), Some(s)) if s.stored_len() as f64 * CLASSES_SLACK < c.stored_len() as f64 => Some(s),
        (Some(c), _) => Some(c),
        (None, s) => s,
    }
}

/// At [`Compression::Balanced`], class planes code deltas where at most this share of the
/// elements changed (the benchmark's bf16 series: 47% and fewer after the first delta of a run).
const SPARSE_AT: f64 = 0.5;

/// The magnitude coder's segments: the tensor's rows where known, and where the chunk starts
/// in them.
fn magnitude_rows(layout: TensorLayout, offset: u64) -> (usize, u64) {
    if layout.row > 0 {
        (layout.row, offset)
    } else {
        (DEFAULT_SEGMENT, 0)
    }
}

/// A chunk of one magnitude stream (the float kind, then the coder's stream).
fn magnitude_chunk(coded: Vec<u8>, float: FloatKind, elems: u64) -> EncodedChunk {
    let mut stream = Vec::with_capacity(1 + coded.len());
    stream.push(float as u8);
    stream.extend_from_slice(&coded);
    let desc = StreamDesc { coder: Coder::Magnitude, len: stream.len() as u64, sum: plane_sum(&stream) };
    let header = ChunkHeader { elems, transform: Transform::Magnitude, flags: 0, mask: None, streams: vec![desc] };
    EncodedChunk { header, streams: vec![stream] }
}

/// At [`Compression::Max`], class planes are kept unless symbols are smaller by more than
/// this factor.
const CLASSES_SLACK: f64 = 1.01;
/// Segments of the magnitude coder where the row length is not known.
const DEFAULT_SEGMENT: usize = 1024;
/// Byte planes are not coded when the magnitude stream is under this fraction of their
/// order-0 estimate. In the benchmark's series the byte planes won only where the magnitude
/// stream was at least 0.955 (fp32) or 1.13 (bf16) of that estimate.
const PLANES_SKIP: f64 = 0.9;

/// The chunk as magnitude streams: class planes, then (for floats wider than two bytes) symbols.
fn encode_magnitude(value: &[u8], base: &[u8], layout: TensorLayout, offset: u64) -> Vec<Option<EncodedChunk>> {
    // Two-byte deltas have few bits below their leading one to store, and class planes code
    // them as small as symbols (the benchmark's bf16 series: the same size to 0.1%) at 1.7x
    // the encode speed; for wider floats symbols are 4% smaller.
    let formats: &[magnitude::Format] = match layout.width {
        2 => &[magnitude::Format::Classes],
        _ => &[magnitude::Format::Classes, magnitude::Format::Symbols],
    };
    let elems = (value.len() / layout.width.max(1)) as u64;
    magnitude::encode_formats(value, base, layout.float, magnitude_rows(layout, offset), usize::MAX, formats)
        .into_iter()
        .map(|coded| Some(magnitude_chunk(coded?, layout.float, elems)))
        .collect()
}

/// The byte-plane candidate (transform, rotation) a chunk is coded with under `mode`, and the
/// order-0 estimate of its planes in bits.
fn plane_candidate(value: &[u8], base: Option<&[u8]>, layout: TensorLayout, mode: DeltaMode, sample: usize) -> ((Transform, bool), f64) {
    let width = layout.width.clamp(1, 8);
    let value = &value[..value.len() / width * width];
    let mut transforms = vec![Transform::None];
    if base.is_some_and(|b| b.len() == value.len()) {
        match mode {
            DeltaMode::Auto => transforms.extend([Transform::Xor, Transform::Sub]),
            DeltaMode::Xor => transforms.push(Transform::Xor),
            DeltaMode::Int => transforms.push(Transform::Sub),
            DeltaMode::Off => {}
        }
    }
    best_candidate_bytes(value, base.filter(|b| b.len() == value.len()), layout, &transforms, sample)
}

/// [`encode_chunk`] with byte planes only, as the candidate `best` (see [`plane_candidate`]).
fn encode_planes(value: &[u8], base: Option<&[u8]>, layout: TensorLayout, best: (Transform, bool)) -> EncodedChunk {
    let width = layout.width.clamp(1, 8);
    let n = value.len() / width;
    let value = &value[..n * width];
    let base = base.filter(|b| b.len() == value.len());
    let (planes, mask) = match width {
        2 => residual_planes::<2>(value, base, best.0, best.1),
        4 => residual_planes::<4>(value, base, best.0, best.1),
        _ => residual_planes_any(value, base, width, best.0, best.1),
    };
    let leads = plane_leads(&planes);
    let mask_coded = mask.as_ref().map(|bm| {
        let (c, bytes) = stream::encode(bm);
        (StreamDesc { coder: c, len: bytes.len() as u64, sum: plane_sum(bm) }, bytes)
    });
    let coded: Vec<(Coder, Vec<u8>, [u8; 8])> = (0..width)
        .into_par_iter()
        .rev()
        .map(|p| {
            let (c, bytes) = code_plane(&planes[p], leads[p].as_deref());
            (c, bytes, plane_sum(&planes[p]))
        })
        .collect();
    let mut streams = Vec::with_capacity(coded.len() + 1);
    let mut descs = Vec::with_capacity(coded.len());
    let mask_desc = mask_coded.map(|(d, bytes)| {
        streams.push(bytes);
        d
    });
    for (coder, bytes, sum) in coded {
        descs.push(StreamDesc { coder, len: bytes.len() as u64, sum });
        streams.push(bytes);
    }
    let mut flags = if best.1 { FLAG_ROTATE } else { 0 };
    if mask_desc.is_some() {
        flags |= FLAG_MASK;
    }
    EncodedChunk { header: ChunkHeader { elems: n as u64, transform: best.0, flags, mask: mask_desc, streams: descs }, streams }
}

/// The split context of each plane below the top one (shared with [`residual`]): whether
/// every higher residual byte of the element is zero.
fn plane_leads(planes: &[Vec<u8>]) -> Vec<Option<Vec<bool>>> {
    let width = planes.len();
    let mut leads: Vec<Option<Vec<bool>>> = vec![None; width];
    for p in (0..width.saturating_sub(1)).rev() {
        let hi = &planes[p + 1];
        leads[p] = Some(match &leads[p + 1] {
            Some(above) => above.iter().zip(hi).map(|(&x, &b)| x & (b == 0)).collect(),
            None => hi.iter().map(|&b| b == 0).collect(),
        });
    }
    leads
}

/// Rotates the top 16 bits of a `width`-byte word left by one (`left`) or right by one.
#[inline(always)]
fn rotate_word(x: u64, width: usize, left: bool) -> u64 {
    let sh = 8 * width as u32 - 16;
    let low = if sh == 0 { 0 } else { (1u64 << sh) - 1 };
    let t16 = (x >> sh) & 0xffff;
    let r16 = if left { (t16 << 1) | (t16 >> 15) } else { (t16 >> 1) | (t16 << 15) };
    (x & low) | ((r16 & 0xffff) << sh)
}

/// The residual of one element of `width` bytes: the transform against the base word, then
/// (with `rotate`, for widths of 2 and more) the rotation of the top 16 bits.
#[inline(always)]
fn residual_word(v: u64, b: u64, t: Transform, rotate: bool, width: usize) -> u64 {
    let m = planes::mask(width);
    let r = match t {
        // A magnitude chunk has no planes: never here.
        Transform::None | Transform::Magnitude => v,
        Transform::Xor => v ^ b,
        Transform::Sub => {
            let d = v.wrapping_sub(b) & m;
            ((d << 1) & m) ^ (((d >> (8 * width as u32 - 1)) & 1).wrapping_neg() & m)
        }
    };
    if rotate && width >= 2 {
        rotate_word(r, width, true)
    } else {
        r
    }
}

/// The value word from the residual word `r` and the base word `b`: the inverse of
/// [`residual_word`].
#[inline(always)]
fn value_word(r: u64, b: u64, t: Transform, rotate: bool, width: usize) -> u64 {
    let m = planes::mask(width);
    let r = if rotate && width >= 2 { rotate_word(r, width, false) } else { r };
    match t {
        Transform::None | Transform::Magnitude => r,
        Transform::Xor => r ^ b,
        Transform::Sub => b.wrapping_add((r >> 1) ^ ((r & 1).wrapping_neg() & m)) & m,
    }
}

/// Evaluates `$run!(transform, rotate)` with both as constants, so that each of the six
/// combinations gets its own loop with no per-element branch on them.
macro_rules! for_each_transform {
    ($t:expr, $rotate:expr, $run:ident) => {
        match ($t, $rotate) {
            (Transform::None, false) => $run!(Transform::None, false),
            (Transform::None, true) => $run!(Transform::None, true),
            (Transform::Xor, false) => $run!(Transform::Xor, false),
            (Transform::Xor, true) => $run!(Transform::Xor, true),
            (Transform::Sub, false) => $run!(Transform::Sub, false),
            (Transform::Sub, true) => $run!(Transform::Sub, true),
            // A magnitude chunk has no planes: never here.
            (Transform::Magnitude, _) => $run!(Transform::None, false),
        }
    };
}

/// Residual planes of a chunk of `W`-byte elements, read straight from the bytes: the mask
/// (when at least 1 / [`MASK_MIN_ZEROS`] of the residuals are zero) and the planes of the
/// non-zero residuals, or of all of them.
fn residual_planes<const W: usize>(value: &[u8], base: Option<&[u8]>, t: Transform, rotate: bool) -> (Planes, Option<Vec<u8>>) {
    macro_rules! run {
        ($t:expr, $rot:expr) => {
            residual_planes_with::<W>(value, base, |v, b| residual_word(v, b, $t, $rot, W), true)
        };
    }
    let t = if base.is_none() { Transform::None } else { t };
    for_each_transform!(t, rotate, run)
}

/// The byte planes of [`Transform::Sub`] (no rotation) of `value` against `base` (2- or 4-byte
/// elements, equal lengths), every element kept (no mask): what [`residual`] codes.
fn difference_planes<const W: usize>(value: &[u8], base: &[u8]) -> Planes {
    residual_planes_with::<W>(value, Some(base), |v, b| residual_word(v, b, Transform::Sub, false, W), false).0
}

/// [`residual_planes`] with the residual function `f`; masked only if `allow_mask`.
#[inline(always)]
fn residual_planes_with<const W: usize>(value: &[u8], base: Option<&[u8]>, f: impl Fn(u64, u64) -> u64, allow_mask: bool) -> (Planes, Option<Vec<u8>>) {
    let n = value.len() / W;
    // Residuals as 32-bit words (W <= 4 here), a quarter of the traffic of u64 words.
    let r: Vec<u32> = match base {
        Some(b) => match (W, le_slice::<u16>(value), le_slice::<u16>(b), le_slice::<u32>(value), le_slice::<u32>(b)) {
            // Aligned slices read as whole words: a loop over two slices vectorises.
            (2, Some(v), Some(b), _, _) => v.iter().zip(b).map(|(&v, &b)| f(u16::from_le(v) as u64, u16::from_le(b) as u64) as u32).collect(),
            (4, _, _, Some(v), Some(b)) => v.iter().zip(b).map(|(&v, &b)| f(u32::from_le(v) as u64, u32::from_le(b) as u64) as u32).collect(),
            _ => value.chunks_exact(W).zip(b.chunks_exact(W)).map(|(v, b)| f(load::<W>(v), load::<W>(b)) as u32).collect(),
        },
        None => match (W, le_slice::<u16>(value), le_slice::<u32>(value)) {
            (2, Some(v), _) => v.iter().map(|&v| f(u16::from_le(v) as u64, 0) as u32).collect(),
            (4, _, Some(v)) => v.iter().map(|&v| f(u32::from_le(v) as u64, 0) as u32).collect(),
            _ => value.chunks_exact(W).map(|v| f(load::<W>(v), 0) as u32).collect(),
        },
    };
    let zeros = r.iter().filter(|&&w| w == 0).count();
    let masked = allow_mask && n > 0 && zeros * MASK_MIN_ZEROS >= n;
    let m = if masked { n - zeros } else { n };
    let mut planes: Planes = vec![vec![0u8; m]; W];
    if !masked {
        split_words(&r, &mut planes);
        return (planes, None);
    }
    let (compact, bitmap) = planes::compact_nonzero_u32(&r);
    split_words(&compact, &mut planes);
    (planes, Some(bitmap))
}

/// `bytes` as a slice of words when its length and alignment allow (values are little-endian:
/// read them through `from_le`).
fn le_slice<T: bytemuck::Pod>(bytes: &[u8]) -> Option<&[T]> {
    bytemuck::try_cast_slice(bytes).ok()
}

/// Writes byte `p` of every word into `planes[p]` (all of one length), one pass.
#[inline(always)]
fn split_words(words: &[u32], planes: &mut Planes) {
    match planes.as_mut_slice() {
        [a, b] => {
            for ((x, y), &w) in a.iter_mut().zip(b.iter_mut()).zip(words) {
                *x = w as u8;
                *y = (w >> 8) as u8;
            }
        }
        [a, b, c, d] => {
            for ((((x, y), z), u), &w) in a.iter_mut().zip(b.iter_mut()).zip(c.iter_mut()).zip(d.iter_mut()).zip(words) {
                *x = w as u8;
                *y = (w >> 8) as u8;
                *z = (w >> 16) as u8;
                *u = (w >> 24) as u8;
            }
        }
        planes => {
            for (p, plane) in planes.iter_mut().enumerate() {
                plane.iter_mut().zip(words).for_each(|(x, &w)| *x = (w >> (8 * p)) as u8);
            }
        }
    }
}

/// [`residual_planes`] for other element widths, through 64-bit words.
fn residual_planes_any(value: &[u8], base: Option<&[u8]>, width: usize, t: Transform, rotate: bool) -> (Planes, Option<Vec<u8>>) {
    let n = value.len() / width.max(1);
    let mut words = le_words(value, width);
    let bw = base.map(|b| le_words(b, width));
    transform_words(&mut words, bw.as_deref(), width, t, rotate);
    let zeros = words.iter().filter(|&&w| w == 0).count();
    let (words, mask) = if n > 0 && zeros * MASK_MIN_ZEROS >= n {
        let (compact, bitmap) = planes::compact_nonzero(&words);
        (compact, Some(bitmap))
    } else {
        (words, None)
    };
    ((0..width).map(|p| words.iter().map(|&w| (w >> (8 * p)) as u8).collect()).collect(), mask)
}

/// Little-endian words (up to 8 bytes) from planes.
fn words_of(planes: &Planes, n: usize) -> Vec<u64> {
    let mut w = vec![0u64; n];
    for (p, plane) in planes.iter().enumerate() {
        for (x, &b) in w.iter_mut().zip(plane) {
            *x |= (b as u64) << (8 * p);
        }
    }
    w
}

/// Little-endian words of `width` bytes from bytes (a trailing partial word is ignored).
pub fn le_words(data: &[u8], width: usize) -> Vec<u64> {
    match width {
        2 => data.chunks_exact(2).map(|w| u16::from_le_bytes([w[0], w[1]]) as u64).collect(),
        4 => data.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64).collect(),
        8 => data.chunks_exact(8).map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])).collect(),
        _ => data.chunks_exact(width.max(1)).map(|w| w.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64)).collect(),
    }
}

/// Turns words into residual words in place: the transform against the base, then the
/// rotation of the top 16 bits (same definitions as the plane functions in [`planes`]).
fn transform_words(w: &mut [u64], base: Option<&[u64]>, width: usize, t: Transform, rotate: bool) {
    match base {
        Some(b) => w.iter_mut().zip(b).for_each(|(x, &y)| *x = residual_word(*x, y, t, rotate, width)),
        None => w.iter_mut().for_each(|x| *x = residual_word(*x, 0, Transform::None, rotate, width)),
    }
}

/// Codes one plane with its smallest coder, trying the split by context (`words`, `p`: the
/// element's higher bytes are all zero) where one is given and the order-0 estimate says the
/// split could pay.
pub(super) fn code_plane(plane: &[u8], lead: Option<&[bool]>) -> (Coder, Vec<u8>) {
    let Some(is_lead) = lead else { return stream::encode(plane) };
    let mut h = [[0u64; 256]; 2];
    for (&x, &l) in plane.iter().zip(is_lead) {
        h[l as usize][x as usize] += 1;
    }
    let [hb, ha] = h;
    let count: u64 = ha.iter().sum();
    if count == 0 || count == plane.len() as u64 {
        return stream::encode(plane);
    }
    let split_est = entropy::bits_of(&ha) + entropy::bits_of(&hb);
    let mut all = ha;
    for (a, b) in all.iter_mut().zip(&hb) {
        *a += b;
    }
    let whole_est = entropy::bits_of(&all);
    if split_est > SPLIT_MAYBE * whole_est || all.contains(&(plane.len() as u64)) {
        return stream::encode_with_hist(plane, &all);
    }
    let s = stream::encode_split(plane, is_lead, Some((&ha, &hb)));
    if split_est < SPLIT_SURE * whole_est {
        return (Coder::Split, s);
    }
    let (c, bytes) = stream::encode_with_hist(plane, &all);
    if s.len() < bytes.len() {
        return (Coder::Split, s);
    }
    (c, bytes)
}

/// A plane's stream as read: (plane index, descriptor, bytes). Borrowed where the bytes are
/// already in memory, owned where they were read from a file (a stored plane is then moved).
pub type Coded<'a> = (usize, StreamDesc, std::borrow::Cow<'a, [u8]>);

/// A decoded plane stream: whole, or the two parts of a split plane (lead part first).
enum Part {
    Whole(Vec<u8>),
    Split(Vec<u8>, Vec<u8>),
}

/// Decodes the non-zero bitmap of a masked chunk (`None` for an unmasked one).
fn decode_mask(h: &ChunkHeader, mask: Option<&[u8]>, n: usize, verify: bool) -> Result<Option<Vec<u8>>, String> {
    match (h.mask, mask) {
        (Some(d), Some(bytes)) => {
            let bm = stream::decode(d.coder, bytes, n.div_ceil(8)).map_err(|m| format!("mask: {m}"))?;
            if verify && plane_sum(&bm) != d.sum {
                return Err("mask: fails its checksum".into());
            }
            if !n.is_multiple_of(8) && bm.last().is_some_and(|&b| b >> (n % 8) != 0) {
                return Err("mask: marks elements past the end".into());
            }
            Ok(Some(bm))
        }
        (None, _) => Ok(None),
        (Some(_), None) => Err("mask stream missing".into()),
    }
}

/// Decompresses plane streams of `m` elements each, in parallel.
fn decode_parts(coded: Vec<Coded<'_>>, m: usize) -> Result<Vec<(usize, StreamDesc, Part)>, String> {
    coded
        .into_par_iter()
        .map(|(p, desc, bytes)| {
            let part = match desc.coder {
                Coder::Split => {
                    let (a, b) = stream::decode_split_parts(&bytes, m).map_err(|e| format!("plane {p}: {e}"))?;
                    Part::Split(a, b)
                }
                // A stored plane is its own bytes: moved, not copied.
                Coder::Stored if bytes.len() == m => Part::Whole(bytes.into_owned()),
                c => Part::Whole(stream::decode(c, &bytes, m).map_err(|e| format!("plane {p}: {e}"))?),
            };
            Ok((p, desc, part))
        })
        .collect()
}

/// Decodes the residual planes of a chunk from its streams: `mask` is the mask stream (for a
/// masked chunk), `coded` the streams of the planes wanted (plane index, descriptor, bytes),
/// which must be the top ones. Every stream is decompressed in parallel; then planes are put
/// back together from the top down (a split plane needs the planes above it) and checked
/// against their checksums. Planes not wanted are empty.
pub fn decode_residual(
    h: &ChunkHeader,
    width: usize,
    mask: Option<&[u8]>,
    coded: Vec<Coded<'_>>,
) -> Result<Planes, String> {
    let n = h.elems as usize;
    let Residual { mut planes, bitmap, decoded } = decode_planes(h, width, mask, coded, true)?;
    if h.transform == Transform::Magnitude {
        // The stream, in the top plane's slot: [`combine`] decodes it with the base.
        return Ok(planes);
    }
    if let Some(bm) = bitmap {
        // Planes that were decoded (possibly empty when every word is zero) go back to n.
        let positions = set_positions(&bm);
        planes[width - decoded..].par_iter_mut().for_each(|p| *p = expand(p, &positions, n));
    }
    Ok(planes)
}

/// Decodes a whole chunk and appends its value (little-endian elements) to `out`: the planes
/// are decompressed (in parallel), split planes merged from the top down, and then one pass per
/// element undoes the rotation and the transform against `base` (the base chunk's value, for
/// deltas), scattering through the mask, without intermediate word buffers. Plane and mask
/// checksums are checked when `verify` is set; a reader that hashes the whole value against
/// its object id may skip them and decode again with `verify` to name a corrupt plane.
pub fn decode_chunk(
    h: &ChunkHeader,
    width: usize,
    mask: Option<&[u8]>,
    coded: Vec<Coded<'_>>,
    base: Option<&[u8]>,
    verify: bool,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let r = decode_planes(h, width, mask, coded, verify)?;
    assemble_chunk(h, &r, base, out)
}

/// The residual of a whole chunk, decoded but not yet combined with its base.
pub struct Residual {
    /// Highest plane first in the decoding; planes not decoded are empty.
    planes: Planes,
    bitmap: Option<Vec<u8>>,
    /// How many of the top planes were decoded.
    decoded: usize,
}

/// Decodes the top planes of a chunk whose streams `coded` holds (the first half of
/// [`decode_chunk`], which needs no base, so it can run while the base is decoded): the mask,
/// every stream in parallel, then the split planes from the top down. Checksums are checked
/// with `verify`.
pub fn decode_planes(h: &ChunkHeader, width: usize, mask: Option<&[u8]>, coded: Vec<Coded<'_>>, verify: bool) -> Result<Residual, String> {
    if h.transform == Transform::Magnitude {
        // Nothing decodes without the base: the stream is kept (in the top plane's slot) for
        // [`assemble_chunk`] or [`combine`].
        let Some((p, desc, bytes)) = coded.into_iter().next().filter(|c| c.0 + 1 == width) else {
            return Err("magnitude stream missing".into());
        };
        if verify && plane_sum(&bytes) != desc.sum {
            return Err(format!("plane {p}: magnitude stream fails its checksum"));
        }
        let mut planes: Planes = vec![Vec::new(); width];
        planes[width - 1] = bytes.into_owned();
        return Ok(Residual { planes, bitmap: None, decoded: width });
    }
    let n = h.elems as usize;
    let bitmap = decode_mask(h, mask, n, verify)?;
    let m = bitmap.as_ref().map_or(n, |bm| bm.iter().map(|b| b.count_ones() as usize).sum());
    let decoded = coded.len();
    let mut parts = decode_parts(coded, m)?;
    parts.sort_by_key(|part| std::cmp::Reverse(part.0));
    // The lowest split plane: the "higher bytes all zero" context is kept only down to it.
    let lowest_split = parts.iter().filter(|x| matches!(x.2, Part::Split(..))).map(|x| x.0).min();
    let mut planes: Planes = vec![Vec::new(); width];
    let mut lead: Option<Vec<bool>> = None;
    let mut sums = Vec::with_capacity(width);
    for (i, (p, desc, part)) in parts.into_iter().enumerate() {
        if p + i + 1 != width {
            return Err(format!("plane {p} requested without the planes above it"));
        }
        let plane = match part {
            Part::Whole(v) => v,
            Part::Split(a, b) => {
                let l = lead.as_deref().ok_or_else(|| format!("plane {p}: the top plane cannot be split"))?;
                stream::merge_split(&a, &b, l).map_err(|e| format!("plane {p}: {e}"))?
            }
        };
        if plane.len() != m {
            return Err(format!("plane {p} has {} bytes, expected {m}", plane.len()));
        }
        if lowest_split.is_some_and(|s| s < p) {
            let l = lead.get_or_insert_with(|| vec![true; m]);
            for (x, &b) in l.iter_mut().zip(&plane) {
                *x &= b == 0;
            }
        }
        sums.push((p, desc.sum));
        planes[p] = plane;
    }
    if verify {
        sums.par_iter().try_for_each(|&(p, sum)| {
            if plane_sum(&planes[p]) != sum {
                return Err(format!("plane {p}: fails its checksum"));
            }
            Ok(())
        })?;
    }
    Ok(Residual { planes, bitmap, decoded })
}

/// The second half of [`decode_chunk`]: the value from the residual and the base chunk's value.
pub fn assemble_chunk(h: &ChunkHeader, r: &Residual, base: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), String> {
    let (n, width) = (h.elems as usize, r.planes.len());
    if r.decoded != width {
        return Err("a full decode needs every plane".into());
    }
    let base = match h.transform {
        Transform::None => None,
        _ => match base {
            Some(b) if b.len() == n * width => Some(b),
            Some(_) => return Err("base chunk does not match".into()),
            None => return Err("delta chunk without a base".into()),
        },
    };
    // A magnitude chunk's decoder appends its elements (class planes copy unchanged segments
    // of the base as they reach them, while they are in the cache).
    if h.transform == Transform::Magnitude {
        return decode_magnitude(&r.planes[width - 1], base.unwrap_or_default(), width, n, out);
    }
    let start = out.len();
    // A masked chunk starts from the base's bytes (elements outside the mask are the base's,
    // or zero without a base): written once, instead of zeroed and then copied over. Other
    // chunks write every element.
    match base.filter(|_| r.bitmap.is_some()) {
        Some(b) => out.extend_from_slice(b),
        // A fresh buffer: zeroed pages from the allocator, not a pass of stores.
        None if start == 0 && out.capacity() < n * width => *out = vec![0; n * width],
        None => out.resize(start + n * width, 0),
    }
    let dst = &mut out[start..];
    let rotate = h.flags & FLAG_ROTATE != 0 && width >= 2;
    let (planes, bitmap) = (&r.planes, r.bitmap.as_deref());
    let t = h.transform;
    match width {
        1 => assemble::<1>(planes, bitmap, base, dst, t, rotate),
        2 => assemble::<2>(planes, bitmap, base, dst, t, rotate),
        3 => assemble::<3>(planes, bitmap, base, dst, t, rotate),
        4 => assemble::<4>(planes, bitmap, base, dst, t, rotate),
        5 => assemble::<5>(planes, bitmap, base, dst, t, rotate),
        6 => assemble::<6>(planes, bitmap, base, dst, t, rotate),
        7 => assemble::<7>(planes, bitmap, base, dst, t, rotate),
        8 => assemble::<8>(planes, bitmap, base, dst, t, rotate),
        w => return Err(format!("unsupported element width {w}")),
    }
    Ok(())
}

/// Decodes a magnitude chunk's stream (its float kind, then the coder's stream) against the
/// base chunk's value and appends the value to `out`.
fn decode_magnitude(stream: &[u8], base: &[u8], width: usize, n: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let (&kind, coded) = stream.split_first().ok_or("magnitude stream is empty")?;
    let fits = |k: &FloatKind| magnitude::supports(*k) && magnitude::width_of(*k) == width;
    let kind = FloatKind::from_byte(kind).filter(fits).ok_or("magnitude stream names a float kind that does not fit the tensor")?;
    magnitude::decode(coded, base, kind, n, out)
}

/// The little-endian word of the first `W` bytes (shared with [`magnitude`]).
#[inline(always)]
fn load<const W: usize>(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a[..W].copy_from_slice(&bytes[..W]);
    u64::from_le_bytes(a)
}

/// Writes every element of a chunk of `W`-byte elements (see [`decode_chunk`]). The transform
/// and rotation are matched outside the loops so that each loop is branch-free.
fn assemble<const W: usize>(planes: &Planes, bitmap: Option<&[u8]>, base: Option<&[u8]>, dst: &mut [u8], t: Transform, rotate: bool) {
    let mut planes: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
    let (mut bitmap, mut dst) = (bitmap, dst);
    // A masked chunk of 2- or 4-byte elements: eight elements at a time where the processor
    // can, then the scalar loop from where that stopped.
    if let (Some(bm), 2 | 4) = (bitmap, W) {
        let (k, used) = simd::place_prefix(&planes, bm, dst, t, rotate);
        planes = planes.iter().map(|p| p.get(used..).unwrap_or_default()).collect();
        bitmap = bm.get(k..);
        dst = dst.get_mut(8 * W * k..).unwrap_or_default();
    }
    // An unmasked one (or of 4-byte elements): sixteen elements at a time, then the scalar
    // loop from there.
    let mut base = base;
    let done = if bitmap.is_none() { simd::assemble_prefix(&planes, base, dst, t, rotate) } else { 0 };
    if done > 0 {
        planes = planes.iter().map(|p| p.get(done..).unwrap_or_default()).collect();
        base = base.map(|b| b.get(W * done..).unwrap_or_default());
        dst = dst.get_mut(W * done..).unwrap_or_default();
    }
    let planes = planes.as_slice();
    macro_rules! run {
        ($t:expr, $rot:expr) => {
            assemble_with::<W>(planes, bitmap, base, dst, |r, b| value_word(r, b, $t, $rot, W))
        };
    }
    for_each_transform!(t, rotate, run)
}

#[inline(always)]
fn assemble_with<const W: usize>(planes: &[&[u8]], bitmap: Option<&[u8]>, base: Option<&[u8]>, dst: &mut [u8], f: impl Fn(u64, u64) -> u64) {
    // Residual words straight from the planes, zipped where the width is known so that no
    // access is bounds-checked.
    match planes {
        [p0, p1] => {
            let words = p0.iter().zip(p1.iter()).map(|(&a, &b)| u16::from_le_bytes([a, b]) as u64);
            place::<W>(words, bitmap, base, dst, f)
        }
        [p0, p1, p2, p3] => {
            let words = p0.iter().zip(p1.iter()).zip(p2.iter().zip(p3.iter())).map(|((&a, &b), (&c, &d))| u32::from_le_bytes([a, b, c, d]) as u64);
            place::<W>(words, bitmap, base, dst, f)
        }
        _ => {
            let m = planes.first().map_or(0, |p| p.len());
            let words = (0..m).map(|j| planes.iter().enumerate().fold(0u64, |w, (p, plane)| w | ((plane[j] as u64) << (8 * p))));
            place::<W>(words, bitmap, base, dst, f)
        }
    }
}

/// Writes the values of `words` (the residuals, in element order, of the elements the mask
/// keeps) into `dst`.
#[inline(always)]
fn place<const W: usize>(words: impl Iterator<Item = u64>, bitmap: Option<&[u8]>, base: Option<&[u8]>, dst: &mut [u8], f: impl Fn(u64, u64) -> u64) {
    match (bitmap, base) {
        (None, Some(base)) => {
            for ((o, b), r) in dst.chunks_exact_mut(W).zip(base.chunks_exact(W)).zip(words) {
                o.copy_from_slice(&f(r, load::<W>(b)).to_le_bytes()[..W]);
            }
        }
        (None, None) => {
            for (o, r) in dst.chunks_exact_mut(W).zip(words) {
                o.copy_from_slice(&f(r, 0).to_le_bytes()[..W]);
            }
        }
        (Some(bm), _) => {
            // Elements outside the mask have a zero residual: their value is the base's (or
            // zero), which `dst` already holds (see `assemble_chunk`).
            let mut words = words;
            for (k, &byte) in bm.iter().enumerate() {
                if byte == 0xff {
                    // Eight kept elements in a row: no bit scanning.
                    let Some(run) = dst.get_mut(k * 8 * W..(k + 1) * 8 * W) else { return };
                    for o in run.chunks_exact_mut(W) {
                        let Some(r) = words.next() else { return };
                        let v = f(r, load::<W>(o));
                        o.copy_from_slice(&v.to_le_bytes()[..W]);
                    }
                    continue;
                }
                let mut bits = byte;
                while bits != 0 {
                    let i = (k * 8 + bits.trailing_zeros() as usize) * W;
                    bits &= bits - 1;
                    let (Some(r), Some(o)) = (words.next(), dst.get_mut(i..i + W)) else { return };
                    let v = f(r, load::<W>(o));
                    o.copy_from_slice(&v.to_le_bytes()[..W]);
                }
            }
        }
    }
}

/// Indices of the set bits of a bitmap (LSB first).
fn set_positions(bitmap: &[u8]) -> Vec<u32> {
    let mut pos = Vec::with_capacity(bitmap.iter().map(|b| b.count_ones() as usize).sum());
    for (k, &byte) in bitmap.iter().enumerate() {
        let mut bits = byte;
        while bits != 0 {
            pos.push((k * 8) as u32 + bits.trailing_zeros());
            bits &= bits - 1;
        }
    }
    pos
}

/// Scatters the bytes of the non-zero elements back to their positions (zeros elsewhere).
fn expand(compact: &[u8], positions: &[u32], n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    // The caller counted exactly one compact byte per position, each below `n`.
    for (&i, &v) in positions.iter().zip(compact) {
        if let Some(o) = out.get_mut(i as usize) {
            *o = v;
        }
    }
    out
}

/// The candidate (transform, rotation) with the smallest order-0 entropy of its residual planes,
/// and that entropy in bits.
fn best_candidate(value: &[u64], base: Option<&[u64]>, layout: TensorLayout, transforms: &[Transform]) -> ((Transform, bool), f64) {
    // Scoring on an evenly strided sample keeps the choice cheap; the estimate is scaled back.
    let n = value.len();
    let stride = n.div_ceil(SAMPLE_ELEMS).max(1);
    let value: Vec<u64> = value.iter().step_by(stride).copied().collect();
    let base: Option<Vec<u64>> = base.map(|b| b.iter().step_by(stride).copied().collect());
    score_candidates(&value, base.as_deref(), n, layout, transforms)
}

/// [`best_candidate`] of little-endian elements, sampled straight from the bytes.
fn best_candidate_bytes(value: &[u8], base: Option<&[u8]>, layout: TensorLayout, transforms: &[Transform], sample: usize) -> ((Transform, bool), f64) {
    let width = layout.width.clamp(1, 8);
    let n = value.len() / width;
    let stride = n.div_ceil(sample.max(1)).max(1);
    let sample = |bytes: &[u8]| -> Vec<u64> {
        bytes.chunks_exact(width).step_by(stride).map(|w| w.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64)).collect()
    };
    score_candidates(&sample(value), base.map(sample).as_deref(), n, layout, transforms)
}

/// Scores every candidate on a sample of `n` elements' words (see [`best_candidate`]).
fn score_candidates(value: &[u64], base: Option<&[u64]>, n: usize, layout: TensorLayout, transforms: &[Transform]) -> ((Transform, bool), f64) {
    let scale = n as f64 / value.len().max(1) as f64;
    let width = layout.width.clamp(1, 8);
    let rotate = layout.float != FloatKind::None && width >= 2;
    // One pass per transform: the rotation only moves bits within the top two planes, so both
    // rotations share the histograms of the planes below.
    let scored: Vec<((Transform, bool), f64)> = transforms
        .par_iter()
        .flat_map_iter(|&t| {
            let mut r = value.to_vec();
            transform_words(&mut r, base, width, t, false);
            let mut hist = vec![[0u64; 256]; width];
            let mut top = [[0u64; 256]; 2];
            let sh = (8 * width as u32).saturating_sub(16);
            for &w in &r {
                for (p, h) in hist.iter_mut().enumerate() {
                    h[((w >> (8 * p)) & 0xff) as usize] += 1;
                }
                if rotate {
                    let t16 = (w >> sh) & 0xffff;
                    let r16 = ((t16 << 1) | (t16 >> 15)) & 0xffff;
                    top[0][(r16 & 0xff) as usize] += 1;
                    top[1][(r16 >> 8) as usize] += 1;
                }
            }
            let low = if rotate { width - 2 } else { width };
            let shared: f64 = hist[..low].iter().map(entropy::bits_of).sum();
            let plain = shared + hist[low..].iter().map(entropy::bits_of).sum::<f64>();
            let rotated = rotate.then(|| ((t, true), scale * (shared + top.iter().map(entropy::bits_of).sum::<f64>())));
            std::iter::once(((t, false), scale * plain)).chain(rotated)
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
    let n = value.first().map_or(0, Vec::len);
    let bw = base.map(|b| words_of(b, n));
    let (_, bits) = best_candidate(&words_of(value, n), bw.as_deref(), layout, transforms);
    (bits / 8.0).ceil() as u64 + chunk_header_len(layout.width) as u64
}

/// How many of the top planes must be decoded to give the top `keep` planes of the value.
pub fn planes_needed(h: &ChunkHeader, width: usize, keep: usize) -> usize {
    let keep = keep.min(width);
    match h.transform {
        Transform::Sub | Transform::Magnitude => width,
        _ if h.flags & FLAG_ROTATE != 0 => keep.max(2).min(width),
        _ => keep,
    }
}

/// Rebuilds the top `keep` value planes of a chunk from its decoded residual planes (the top
/// [`planes_needed`] ones) and, for deltas, the base's planes (the same top planes, all of
/// them for [`Transform::Sub`]). Planes below are returned empty.
pub fn combine(h: &ChunkHeader, mut r: Planes, base: Option<&Planes>, keep: usize) -> Result<Planes, String> {
    let width = r.len();
    if h.transform == Transform::Magnitude {
        let b = base.ok_or("magnitude chunk without a base")?;
        let n = h.elems as usize;
        if b.iter().any(|p| p.len() != n) {
            return Err("base chunk does not match".into());
        }
        let mut bytes = Vec::with_capacity(n * width);
        planes::join_top(b, 0, &mut bytes);
        let mut value = Vec::with_capacity(bytes.len());
        decode_magnitude(&r[width - 1], &bytes, width, n, &mut value)?;
        let mut v = planes::split(&value, width);
        for p in v.iter_mut().take(width - keep.min(width)) {
            p.clear();
        }
        return Ok(v);
    }
    if h.flags & FLAG_ROTATE != 0 {
        planes::unrotate_top(&mut r);
    }
    let mut v = match h.transform {
        // Magnitude chunks returned above.
        Transform::None | Transform::Magnitude => r,
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

/// A tensor coded in memory: the chunks a tensor object holds, without the object headers.
/// For benchmarks and embedders that want the codec without a repository.
pub struct EncodedTensor {
    layout: TensorLayout,
    chunks: Vec<EncodedChunk>,
    /// BLAKE3 of the value, as the object id would be.
    pub hash: blake3::Hash,
}

impl EncodedTensor {
    /// Bytes the chunks take (headers and streams).
    pub fn coded_len(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| chunk_header_len(c.streams.len()) as u64 + c.streams.iter().map(|s| s.len() as u64).sum::<u64>())
            .sum()
    }
}

/// Codes `value` (little-endian elements of `layout`) whole or against `base` (same length),
/// chunk by chunk, hashing it as an object write does.
pub fn encode_tensor(value: &[u8], base: Option<&[u8]>, layout: TensorLayout, enc: Encoding) -> EncodedTensor {
    let cb = CHUNK_ELEMS as usize * layout.width;
    let base = base.filter(|b| b.len() == value.len());
    let chunks = value
        .chunks(cb)
        .enumerate()
        .map(|(i, v)| {
            encode_chunk(v, base.map(|b| &b[i * cb..i * cb + v.len()]), layout, enc, i as u64 * CHUNK_ELEMS)
        })
        .collect();
    EncodedTensor { layout, chunks, hash: blake3::hash(value) }
}

/// Decodes an [`EncodedTensor`] (with the `base` it was coded against) and verifies the hash.
pub fn decode_tensor(t: &EncodedTensor, base: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let out = decode_tensor_with(t, base, false)?;
    if blake3::hash(&out) == t.hash {
        return Ok(out);
    }
    // Name the corrupt plane if a checksum does.
    decode_tensor_with(t, base, true)?;
    Err("decoded tensor does not match its hash".into())
}

fn decode_tensor_with(t: &EncodedTensor, base: Option<&[u8]>, verify: bool) -> Result<Vec<u8>, String> {
    let w = t.layout.width;
    let cb = CHUNK_ELEMS as usize * w;
    let mut out = Vec::new();
    for (i, c) in t.chunks.iter().enumerate() {
        let mut it = c.streams.iter();
        let mask = c.header.mask.and_then(|_| it.next().map(Vec::as_slice));
        let coded = c.header.streams.iter().zip(it).enumerate().map(|(k, (d, b))| (w - 1 - k, *d, b.as_slice().into())).collect();
        let n = c.header.elems as usize * w;
        let b = match (c.header.transform, base) {
            (Transform::None, _) => None,
            (_, Some(b)) => Some(b.get(i * cb..i * cb + n).ok_or("base too short")?),
            (_, None) => return Err("delta chunk without its base".into()),
        };
        decode_chunk(&c.header, w, mask, coded, b, verify, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
