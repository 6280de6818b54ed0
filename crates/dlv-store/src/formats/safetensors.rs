//! safetensors reader and writer, streaming: the header is parsed by hand from a buffered file,
//! tensor data is copied with a seek and 1 MiB chunks (no mmap, never the whole file in memory).
//!
//! Validation on open: the header length fits in the file and under [`MAX_HEADER_LEN`]
//! (100 MB, as the `safetensors` crate), the header is a JSON object, every dtype is one dlv
//! knows, shapes and offsets are non-negative integers, `end - begin == numel * dtype size`,
//! and the tensors, sorted by offset, tile the data section exactly from 0 to the end of the
//! file (no gap, no overlap, no trailing bytes; the `safetensors` crate refuses the same files).
//! `__metadata__` (string to string) is kept and available through
//! [`SafetensorsReader::metadata`].
//!
//! The writer emits tensors in the order given (the format does not require an order; the
//! `safetensors` crate sorts by dtype then name, but any contiguous layout loads), `__metadata__`
//! first, and pads the JSON header with spaces to a multiple of 8 bytes like the crate does.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{checked_byte_len, copy_exact, CountingWriter, TensorSource};
use crate::{DType, Result, StoreError, TensorInfo};

/// Largest JSON header accepted (the `safetensors` crate's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// An open safetensors file.
#[derive(Debug)]
pub struct SafetensorsReader {
    path: PathBuf,
    file: BufReader<File>,
    data_start: u64,
    tensors: Vec<TensorInfo>,
    /// Data offsets (relative to `data_start`) of each tensor, parallel to `tensors`.
    offsets: Vec<(u64, u64)>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsReader {
    /// The `__metadata__` map of the header (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Byte offset in the file where tensor data begins (8 + header length).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }
}

/// Opens and validates a safetensors file.
pub fn open_safetensors(path: &Path) -> Result<SafetensorsReader> {
    let f = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let mut file = BufReader::new(f);
    let fmt = |offset: u64, msg: String| StoreError::format(path, Some(offset), msg);

    if file_len < 8 {
        return Err(fmt(
            0,
            format!("truncated safetensors file: {file_len} bytes, the header length alone needs 8"),
        ));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| StoreError::io(path, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(fmt(
            0,
            format!("header length {header_len} exceeds the limit of {MAX_HEADER_LEN} bytes (not a safetensors file?)"),
        ));
    }
    if header_len > file_len - 8 {
        return Err(fmt(
            0,
            format!(
                "header length {header_len} is larger than the rest of the file ({} bytes): truncated file or not safetensors",
                file_len - 8
            ),
        ));
    }
    // Bounded by both the file size and MAX_HEADER_LEN, checked above.
    let mut header = Vec::with_capacity(header_len as usize);
    (&mut file)
        .take(header_len)
        .read_to_end(&mut header)
        .map_err(|e| StoreError::io(path, e))?;
    if header.len() as u64 != header_len {
        return Err(fmt(8 + header.len() as u64, "file ended inside the header".into()));
    }
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;

    let json: Value = serde_json::from_slice(&header).map_err(|e| {
        // Headers are usually one line; column is then a byte position in the header.
        let off = if e.line() <= 1 { 8 + e.column().saturating_sub(1) as u64 } else { 8 };
        fmt(off, format!("header is not valid JSON: {e}"))
    })?;
    let Value::Object(map) = json else {
        return Err(fmt(8, "header is not a JSON object".into()));
    };

    let mut metadata = BTreeMap::new();
    let mut entries: Vec<(TensorInfo, (u64, u64))> = Vec::with_capacity(map.len().min(1 << 16));
    for (name, v) in &map {
        if name == "__metadata__" {
            let Value::Object(m) = v else {
                return Err(fmt(8, "__metadata__ is not an object of strings".into()));
            };
            for (k, mv) in m {
                let Value::String(s) = mv else {
                    return Err(fmt(8, format!("__metadata__ value of '{k}' is not a string")));
                };
                metadata.insert(k.clone(), s.clone());
            }
            continue;
        }
        entries.push(parse_entry(name, v).map_err(|msg| fmt(8, format!("tensor '{name}': {msg}")))?);
    }

    // Tensors must tile the data section exactly, in offset order.
    entries.sort_by_key(|(_, off)| *off);
    let mut expected = 0u64;
    for (info, (begin, end)) in &entries {
        if *begin != expected {
            let what = if *begin < expected { "overlaps the previous tensor" } else { "leaves a gap after the previous tensor" };
            return Err(fmt(
                data_start + (*begin).min(data_len),
                format!("tensor '{}': data_offsets [{begin}, {end}] {what} (expected it to start at {expected})", info.name),
            ));
        }
        if *end > data_len {
            return Err(fmt(
                data_start + data_len,
                format!(
                    "tensor '{}': data_offsets [{begin}, {end}] run past the end of the data section ({data_len} bytes): truncated file or lying header",
                    info.name
                ),
            ));
        }
        expected = *end;
    }
    if expected != data_len {
        return Err(fmt(
            data_start + expected,
            format!("{} bytes after the last tensor that no header entry describes", data_len - expected),
        ));
    }

    let (tensors, offsets) = entries.into_iter().unzip();
    Ok(SafetensorsReader {
        path: path.to_path_buf(),
        file,
        data_start,
        tensors,
        offsets,
        metadata,
    })
}

/// One header entry: `{"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}`.
fn parse_entry(name: &str, v: &Value) -> std::result::Result<(TensorInfo, (u64, u64)), String> {
    let Value::Object(o) = v else {
        return Err("entry is not an object".into());
    };
    let dtype_s = o
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or("missing or non-string \"dtype\"")?;
    let dtype = DType::parse(dtype_s).ok_or_else(|| format!("unsupported dtype '{dtype_s}'"))?;
    let shape_v = o
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("missing or non-array \"shape\"")?;
    let mut dims = Vec::with_capacity(shape_v.len());
    for d in shape_v {
        dims.push(d.as_u64().ok_or("shape holds a value that is not a non-negative integer")?);
    }
    let offs = o
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or("missing or non-array \"data_offsets\"")?;
    let (begin, end) = match offs.as_slice() {
        [b, e] => (
            b.as_u64().ok_or("data_offsets are not non-negative integers")?,
            e.as_u64().ok_or("data_offsets are not non-negative integers")?,
        ),
        _ => return Err("data_offsets must be [begin, end]".into()),
    };
    if end < begin {
        return Err(format!("data_offsets [{begin}, {end}] end before they begin"));
    }
    let len = checked_byte_len(&dims, dtype.size()).ok_or("shape overflows")?;
    if end - begin != len {
        return Err(format!(
            "data_offsets [{begin}, {end}] span {} bytes but shape {dims:?} of {dtype} needs {len}",
            end - begin
        ));
    }
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| "shape dimension too large".to_string()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((
        TensorInfo {
            name: name.to_string(),
            dtype,
            shape,
        },
        (begin, end),
    ))
}

impl TensorSource for SafetensorsReader {
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn read_tensor(&mut self, index: usize, out: &mut dyn Write) -> Result<u64> {
        let (Some(info), Some(&(begin, end))) = (self.tensors.get(index), self.offsets.get(index)) else {
            return Err(StoreError::Invalid(format!(
                "{}: no tensor #{index} (the file has {})",
                self.path.display(),
                self.tensors.len()
            )));
        };
        let start = self.data_start + begin;
        self.file
            .seek(SeekFrom::Start(start))
            .map_err(|e| StoreError::io(&self.path, e))?;
        let what = format!("tensor '{}'", info.name);
        copy_exact(&mut self.file, out, end - begin, &self.path, Some(start), &what)
    }
}

/// Writes a safetensors file: the header for `tensors` (and `metadata` as `__metadata__`), then
/// `fill(i, out)` for each tensor in order, which must write exactly `tensors[i].byte_len()`
/// bytes. Writes to a temporary file in the same directory, syncs it and renames it over
/// `path`, so a failure never leaves a partial file at `path`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorInfo],
    metadata: Option<&BTreeMap<String, String>>,
    fill: &mut dyn FnMut(usize, &mut dyn Write) -> Result<u64>,
) -> Result<()> {
    let header = build_header(tensors, metadata)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| StoreError::io(dir, e))?;
    {
        let mut w = BufWriter::with_capacity(super::CHUNK, tmp.as_file());
        let io = |e| StoreError::io(path, e);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for (i, t) in tensors.iter().enumerate() {
            let mut cw = CountingWriter { inner: &mut w, count: 0 };
            let reported = fill(i, &mut cw)?;
            let want = t.byte_len();
            if cw.count != want || reported != cw.count {
                return Err(StoreError::Invalid(format!(
                    "writing {}: tensor '{}' needs {want} bytes, {} were written (fill reported {reported})",
                    path.display(),
                    t.name,
                    cw.count
                )));
            }
        }
        w.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(|e| StoreError::io(path, e))?;
    tmp.persist(path).map_err(|e| StoreError::io(path, e.error))?;
    Ok(())
}

/// The JSON header, padded with spaces to a multiple of 8 bytes.
fn build_header(tensors: &[TensorInfo], metadata: Option<&BTreeMap<String, String>>) -> Result<Vec<u8>> {
    let mut s = String::from("{");
    let mut first = true;
    if let Some(m) = metadata {
        s.push_str("\"__metadata__\":");
        s.push_str(&json(m)?);
        first = false;
    }
    let mut seen = HashSet::new();
    let mut offset = 0u64;
    for t in tensors {
        if t.name == "__metadata__" || !seen.insert(t.name.as_str()) {
            return Err(StoreError::Invalid(format!(
                "cannot write tensor name '{}' twice or as __metadata__",
                t.name
            )));
        }
        if !first {
            s.push(',');
        }
        first = false;
        let end = offset + t.byte_len();
        s.push_str(&json(&t.name)?);
        s.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            t.dtype.as_str(),
            json(&t.shape)?
        ));
        offset = end;
    }
    s.push('}');
    let mut bytes = s.into_bytes();
    let padded = bytes.len().next_multiple_of(8);
    bytes.resize(padded, b' ');
    Ok(bytes)
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("safetensors header: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_and_ordered() {
        let t = vec![
            TensorInfo { name: "b".into(), dtype: DType::F32, shape: vec![2] },
            TensorInfo { name: "a".into(), dtype: DType::U8, shape: vec![3] },
        ];
        let h = build_header(&t, None).unwrap_or_default();
        assert_eq!(h.len() % 8, 0);
        let s = String::from_utf8_lossy(&h);
        assert!(s.starts_with("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\""), "{s}");
    }
}
