//! Caffe `.caffemodel` reader: a binary protobuf `NetParameter`, decoded by a hand-written,
//! streaming wire reader.
//!
//! Only what locates the weights is decoded: `NetParameter.layer` (100, `LayerParameter`: name 1,
//! type 2, blobs 7) and the older `NetParameter.layers` (2, `V1LayerParameter`: name 4, type 5 as
//! an enum, blobs 6), and in `BlobProto` the shape (7, `BlobShape.dim` 1, packed or not), the
//! legacy `num/channels/height/width` (1-4), `data` (5, float) and `double_data` (8, double),
//! packed or not. Every other field is skipped by wire type.
//!
//! The file is not read into memory: the decoder walks it through a buffered reader, checks every
//! length against the end of the enclosing message (and so against the file size), and records
//! where each blob's values lie; [`TensorSource::read_tensor`] seeks back to them and streams
//! them out in bounded chunks (unpacked values, which are interleaved with field tags, are picked
//! out one by one).
//!
//! Tensor names are `{layer}.{blob}` with blob names in Caffe blob order given by
//! [`caffe_blob_name`]. Legacy 4-d blob dims are kept as written, except the ones Caffe itself
//! compares loosely: a bias stored as `(1, 1, 1, N)` becomes `[N]` and an `InnerProduct` weight
//! stored as `(1, 1, N, K)` becomes `[N, K]`.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{copy_exact, TensorSource, CHUNK};
use crate::{DType, Result, StoreError, TensorInfo};

/// Bound on the runs of values recorded for one blob (a packed blob has one run).
const MAX_RUNS_PER_BLOB: usize = 1 << 20;
/// Bound on strings (layer names and types) read into memory.
const MAX_STRING: u64 = 1 << 20;
/// Bound on the number of dimensions of a blob.
const MAX_DIMS: usize = 32;

/// Name of blob `index` of a layer of type `layer_type`, in Caffe blob order.
pub fn caffe_blob_name(layer_type: &str, index: usize) -> String {
    let names: &[&str] = match layer_type {
        "Convolution" | "InnerProduct" | "Deconvolution" | "Scale" => &["weight", "bias"],
        "BatchNorm" => &["running_mean", "running_var", "scale_factor"],
        _ => &[],
    };
    match names.get(index) {
        Some(n) => (*n).to_string(),
        None => format!("blob{index}"),
    }
}

/// Caffe's `V1LayerParameter.LayerType` enum, spelled as the newer string types.
fn v1_type_name(v: u64) -> String {
    let s = match v {
        0 => "None",
        1 => "Accuracy",
        2 => "BNLL",
        3 => "Concat",
        4 => "Convolution",
        5 => "Data",
        6 => "Dropout",
        7 => "EuclideanLoss",
        8 => "Flatten",
        9 => "HDF5Data",
        10 => "HDF5Output",
        11 => "Im2col",
        12 => "ImageData",
        13 => "InfogainLoss",
        14 => "InnerProduct",
        15 => "LRN",
        16 => "MultinomialLogisticLoss",
        17 => "Pooling",
        18 => "ReLU",
        19 => "Sigmoid",
        20 => "Softmax",
        21 => "SoftmaxWithLoss",
        22 => "Split",
        23 => "TanH",
        24 => "WindowData",
        25 => "Eltwise",
        26 => "Power",
        27 => "SigmoidCrossEntropyLoss",
        28 => "HingeLoss",
        29 => "MemoryData",
        30 => "ArgMax",
        31 => "Threshold",
        32 => "DummyData",
        33 => "Slice",
        34 => "MVN",
        35 => "AbsVal",
        36 => "Silence",
        37 => "ContrastiveLoss",
        38 => "Exp",
        39 => "Deconvolution",
        other => return format!("V1Type{other}"),
    };
    s.to_string()
}

/// `count` values of `elem` bytes each, the first at `offset`, one every `stride` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    offset: u64,
    count: u64,
    stride: u64,
}

#[derive(Debug, Clone, Default)]
struct Values {
    runs: Vec<Run>,
    count: u64,
}

impl Values {
    fn push_packed(&mut self, offset: u64, count: u64, elem: u64) {
        if count > 0 {
            self.runs.push(Run { offset, count, stride: elem });
            self.count += count;
        }
    }

    /// One unpacked value; merged into the previous run when evenly spaced.
    fn push_one(&mut self, offset: u64, elem: u64) {
        self.count += 1;
        if let Some(last) = self.runs.last_mut() {
            if last.count == 1 && offset > last.offset {
                last.stride = offset - last.offset;
                last.count = 2;
                return;
            }
            if last.count > 1 && last.stride > elem && Some(offset) == last.offset.checked_add(last.count * last.stride) {
                last.count += 1;
                return;
            }
        }
        self.runs.push(Run { offset, count: 1, stride: elem });
    }
}

#[derive(Debug, Default)]
struct RawBlob {
    at: u64,
    shape: Option<Vec<i64>>,
    legacy: [Option<i64>; 4],
    f32s: Values,
    f64s: Values,
}

/// Where a tensor's values are in the file.
#[derive(Debug, Clone)]
struct BlobLoc {
    runs: Vec<Run>,
    elem: u64,
}

/// An open `.caffemodel`.
#[derive(Debug)]
pub struct CaffemodelReader {
    path: PathBuf,
    file: BufReader<File>,
    tensors: Vec<TensorInfo>,
    locs: Vec<BlobLoc>,
    layers: Vec<(String, String)>,
}

impl CaffemodelReader {
    /// `(name, type)` of every layer in the file, in order, blobs or not.
    pub fn layers(&self) -> &[(String, String)] {
        &self.layers
    }
}

/// The streaming protobuf wire reader.
struct Wire<'a> {
    r: BufReader<File>,
    pos: u64,
    path: &'a Path,
}

impl Wire<'_> {
    fn err(&self, at: u64, msg: impl Into<String>) -> StoreError {
        StoreError::format(self.path, Some(at), msg)
    }

    fn byte(&mut self, end: u64) -> Result<u8> {
        if self.pos >= end {
            return Err(self.err(self.pos, "truncated message: value runs past the end of its message"));
        }
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(1) => {
                self.pos += 1;
                Ok(b[0])
            }
            Ok(_) => Err(self.err(self.pos, "unexpected end of file")),
            Err(e) => Err(StoreError::io(self.path, e)),
        }
    }

    fn varint(&mut self, end: u64) -> Result<u64> {
        let at = self.pos;
        let mut v: u64 = 0;
        for k in 0..10 {
            let b = self.byte(end)?;
            v |= u64::from(b & 0x7f) << (7 * k);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err(at, "varint longer than 10 bytes"))
    }

    fn tag(&mut self, end: u64) -> Result<(u64, u8)> {
        let at = self.pos;
        let t = self.varint(end)?;
        let field = t >> 3;
        if field == 0 {
            return Err(self.err(at, "field number 0 (not a protobuf message, or garbage)"));
        }
        Ok((field, (t & 7) as u8))
    }

    /// Reads a length prefix and returns the end position of the delimited value.
    fn len_end(&mut self, end: u64) -> Result<u64> {
        let at = self.pos;
        let n = self.varint(end)?;
        if n > end - self.pos {
            return Err(self.err(
                at,
                format!("length {n} runs past the end of the enclosing message ({} bytes left): truncated or corrupt file", end - self.pos),
            ));
        }
        Ok(self.pos + n)
    }

    fn skip_to(&mut self, to: u64) -> Result<()> {
        let delta = to.saturating_sub(self.pos);
        let d = i64::try_from(delta).map_err(|_| self.err(self.pos, "skip too large"))?;
        self.r.seek_relative(d).map_err(|e| StoreError::io(self.path, e))?;
        self.pos = to;
        Ok(())
    }

    fn fixed(&mut self, n: u64, end: u64) -> Result<u64> {
        if n > end - self.pos {
            return Err(self.err(self.pos, "truncated fixed-width value"));
        }
        let at = self.pos;
        self.skip_to(self.pos + n)?;
        Ok(at)
    }

    fn skip(&mut self, wire: u8, end: u64) -> Result<()> {
        match wire {
            0 => self.varint(end).map(|_| ()),
            1 => self.fixed(8, end).map(|_| ()),
            2 => {
                let e = self.len_end(end)?;
                self.skip_to(e)
            }
            5 => self.fixed(4, end).map(|_| ()),
            w => Err(self.err(self.pos, format!("unsupported wire type {w} (groups or garbage)"))),
        }
    }

    fn string(&mut self, end: u64) -> Result<String> {
        let at = self.pos;
        let e = self.len_end(end)?;
        let n = e - self.pos;
        if n > MAX_STRING {
            return Err(self.err(at, format!("string of {n} bytes is implausibly long")));
        }
        let mut buf = Vec::with_capacity(n as usize);
        (&mut self.r).take(n).read_to_end(&mut buf).map_err(|e| StoreError::io(self.path, e))?;
        if buf.len() as u64 != n {
            return Err(self.err(self.pos, "unexpected end of file in a string"));
        }
        self.pos = e;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn blob(&mut self, end: u64) -> Result<RawBlob> {
        let mut b = RawBlob { at: self.pos, ..RawBlob::default() };
        while self.pos < end {
            let at = self.pos;
            let (field, wire) = self.tag(end)?;
            match (field, wire) {
                (1..=4, 0) => {
                    // int32 legacy dims; a negative value is sign-extended to 64 bits.
                    let v = self.varint(end)? as i64;
                    if let Some(slot) = usize::try_from(field - 1).ok().and_then(|i| b.legacy.get_mut(i)) {
                        *slot = Some(v);
                    }
                }
                (7, 2) => {
                    let e = self.len_end(end)?;
                    let mut dims = Vec::new();
                    while self.pos < e {
                        let (f, w) = self.tag(e)?;
                        match (f, w) {
                            (1, 2) => {
                                let pe = self.len_end(e)?;
                                while self.pos < pe {
                                    dims.push(self.varint(pe)? as i64);
                                    if dims.len() > MAX_DIMS {
                                        return Err(self.err(at, "blob shape has too many dimensions"));
                                    }
                                }
                            }
                            (1, 0) => {
                                dims.push(self.varint(e)? as i64);
                                if dims.len() > MAX_DIMS {
                                    return Err(self.err(at, "blob shape has too many dimensions"));
                                }
                            }
                            (_, w) => self.skip(w, e)?,
                        }
                    }
                    b.shape = Some(dims);
                }
                (5, 2) | (8, 2) => {
                    let elem = if field == 5 { 4 } else { 8 };
                    let e = self.len_end(end)?;
                    let n = e - self.pos;
                    if !n.is_multiple_of(elem) {
                        return Err(self.err(at, format!("packed {} data of {n} bytes is not a whole number of values", if elem == 4 { "float" } else { "double" })));
                    }
                    let vals = if field == 5 { &mut b.f32s } else { &mut b.f64s };
                    vals.push_packed(self.pos, n / elem, elem);
                    self.skip_to(e)?;
                }
                (5, 5) => {
                    let off = self.fixed(4, end)?;
                    b.f32s.push_one(off, 4);
                }
                (8, 1) => {
                    let off = self.fixed(8, end)?;
                    b.f64s.push_one(off, 8);
                }
                (_, w) => self.skip(w, end)?,
            }
            if b.f32s.runs.len() > MAX_RUNS_PER_BLOB || b.f64s.runs.len() > MAX_RUNS_PER_BLOB {
                return Err(self.err(at, "blob values are too fragmented"));
            }
        }
        Ok(b)
    }

    /// A `LayerParameter` (v2) or `V1LayerParameter`: `(name, type, blobs)`.
    fn layer(&mut self, end: u64, v1: bool) -> Result<(String, String, Vec<RawBlob>)> {
        let (name_f, blobs_f) = if v1 { (4, 6) } else { (1, 7) };
        let mut name = String::new();
        let mut ty = String::new();
        let mut blobs = Vec::new();
        while self.pos < end {
            let (field, wire) = self.tag(end)?;
            match (field, wire) {
                (f, 2) if f == name_f => name = self.string(end)?,
                (2, 2) if !v1 => ty = self.string(end)?,
                (5, 0) if v1 => ty = v1_type_name(self.varint(end)?),
                (f, 2) if f == blobs_f => {
                    let e = self.len_end(end)?;
                    blobs.push(self.blob(e)?);
                    if self.pos != e {
                        return Err(self.err(self.pos, "blob ended at the wrong place"));
                    }
                }
                (_, w) => self.skip(w, end)?,
            }
        }
        Ok((name, ty, blobs))
    }
}

/// Opens a `.caffemodel` and locates every blob.
pub fn open_caffemodel(path: &Path) -> Result<CaffemodelReader> {
    let f = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let mut w = Wire { r: BufReader::new(f), pos: 0, path };
    let mut tensors = Vec::new();
    let mut locs = Vec::new();
    let mut layers = Vec::new();
    if file_len == 0 {
        return Err(w.err(0, "empty file is not a caffemodel"));
    }
    while w.pos < file_len {
        let (field, wire) = w.tag(file_len)?;
        let v1 = match (field, wire) {
            (100, 2) => false,
            (2, 2) => true,
            (_, wt) => {
                w.skip(wt, file_len)?;
                continue;
            }
        };
        let layer_at = w.pos;
        let e = w.len_end(file_len)?;
        let (name, ty, blobs) = w.layer(e, v1)?;
        for (i, raw) in blobs.into_iter().enumerate() {
            let blob_name = caffe_blob_name(&ty, i);
            let (info, loc) = finish_blob(raw, &name, &ty, i, &blob_name).map_err(|(at, m)| {
                StoreError::format(path, Some(at.max(layer_at)), format!("layer '{name}' blob {i} ({blob_name}): {m}"))
            })?;
            tensors.push(info);
            locs.push(loc);
        }
        layers.push((name, ty));
    }
    if layers.is_empty() {
        return Err(StoreError::format(path, None, "no layers found: not a Caffe NetParameter"));
    }
    // Rewind the reader for tensor reads.
    let mut file = w.r;
    file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(path, e))?;
    Ok(CaffemodelReader { path: path.to_path_buf(), file, tensors, locs, layers })
}

fn finish_blob(raw: RawBlob, layer: &str, ty: &str, index: usize, blob: &str) -> std::result::Result<(TensorInfo, BlobLoc), (u64, String)> {
    let at = raw.at;
    let (vals, dtype) = match (raw.f32s.count, raw.f64s.count) {
        (0, n) if n > 0 => (raw.f64s, DType::F64),
        (_, 0) => (raw.f32s, DType::F32),
        _ => return Err((at, "holds both data and double_data".into())),
    };
    let to_usize = |d: i64| usize::try_from(d).map_err(|_| (at, format!("negative or huge dimension {d}")));
    let shape: Vec<usize> = if let Some(dims) = raw.shape {
        dims.into_iter().map(to_usize).collect::<std::result::Result<_, _>>()?
    } else if raw.legacy.iter().any(Option::is_some) {
        let d: Vec<usize> = raw.legacy.iter().map(|d| to_usize(d.unwrap_or(0))).collect::<std::result::Result<_, _>>()?;
        let is_bias = index == 1 && matches!(ty, "Convolution" | "InnerProduct" | "Deconvolution");
        match d.as_slice() {
            [1, 1, 1, n] if is_bias => vec![*n],
            [1, 1, n, k] if index == 0 && ty == "InnerProduct" => vec![*n, *k],
            _ => d,
        }
    } else if vals.count > 0 {
        vec![vals.count as usize]
    } else {
        vec![0]
    };
    let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).ok_or((at, "shape overflows".to_string()))?;
    if numel != vals.count {
        return Err((at, format!("shape {shape:?} needs {numel} values but the blob holds {}", vals.count)));
    }
    Ok((
        TensorInfo { name: format!("{layer}.{blob}"), dtype, shape },
        BlobLoc { runs: vals.runs, elem: dtype.size() as u64 },
    ))
}

impl TensorSource for CaffemodelReader {
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn read_tensor(&mut self, index: usize, out: &mut dyn Write) -> Result<u64> {
        let (Some(info), Some(loc)) = (self.tensors.get(index), self.locs.get(index)) else {
            return Err(StoreError::Invalid(format!("{}: no tensor #{index}", self.path.display())));
        };
        let path = self.path.as_path();
        let what = format!("tensor '{}'", info.name);
        let mut total = 0u64;
        let mut buf = Vec::new();
        for run in &loc.runs {
            self.file.seek(SeekFrom::Start(run.offset)).map_err(|e| StoreError::io(path, e))?;
            if run.stride == loc.elem || run.count == 1 {
                total += copy_exact(&mut self.file, out, run.count * loc.elem, path, Some(run.offset), &what)?;
                continue;
            }
            // Unpacked values: read batches that span k values and pick each one out.
            let per_batch = (CHUNK as u64 / run.stride).max(1);
            let mut done = 0u64;
            while done < run.count {
                let k = per_batch.min(run.count - done);
                let span = ((k - 1) * run.stride + loc.elem) as usize;
                buf.resize(span, 0);
                self.file.read_exact(&mut buf).map_err(|_| {
                    StoreError::format(path, Some(run.offset + done * run.stride), format!("{what}: file ends early"))
                })?;
                for j in 0..k as usize {
                    let s = j * run.stride as usize;
                    out.write_all(&buf[s..s + loc.elem as usize]).map_err(|e| StoreError::io(path, e))?;
                }
                done += k;
                if done < run.count {
                    // Move from the end of the last value read to the start of the next one.
                    let gap = (run.stride - loc.elem) as i64;
                    self.file.seek_relative(gap).map_err(|e| StoreError::io(path, e))?;
                }
            }
            total += run.count * loc.elem;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_follow_caffe_order() {
        assert_eq!(caffe_blob_name("Convolution", 1), "bias");
        assert_eq!(caffe_blob_name("BatchNorm", 2), "scale_factor");
        assert_eq!(caffe_blob_name("PReLU", 0), "blob0");
    }

    #[test]
    fn unpacked_values_merge_into_runs() {
        let mut v = Values::default();
        for k in 0..4 {
            v.push_one(10 + 5 * k, 4);
        }
        v.push_one(100, 4);
        assert_eq!(v.count, 5);
        assert_eq!(v.runs, vec![Run { offset: 10, count: 4, stride: 5 }, Run { offset: 100, count: 1, stride: 4 }]);
    }
}
