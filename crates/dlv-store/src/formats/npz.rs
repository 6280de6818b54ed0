//! NumPy `.npz` reader: a zip archive (stored or deflated members) of `.npy` files.
//!
//! Each member's `.npy` header (format versions 1, 2 and 3) is parsed on open; the tensor name
//! is the member name without `.npy`. Supported `descr`: `f8 f4 f2 i8 i4 i2 i1 u1 b1` with any
//! byte-order mark (`<`, `>`, `|`, `=`; `=` is taken as little-endian); big-endian data is
//! byte-swapped to little-endian while streaming. Structured dtypes, unsigned integers wider
//! than a byte, complex and object arrays are refused with a clear error.
//!
//! `fortran_order: True` arrays are transposed to C order; this needs the whole tensor in memory
//! (one tensor's worth, read incrementally so the allocation follows the real data), everything
//! else streams in 1 MiB chunks. A member whose uncompressed size disagrees with its header is a
//! format error (truncated or lying header).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use super::{checked_byte_len, copy_exact, skip_exact, TensorSource, CHUNK};
use crate::{DType, Result, StoreError, TensorInfo};

/// Largest `.npy` header accepted (numpy itself caps headers far below this).
const MAX_NPY_HEADER: u64 = 1 << 20;

#[derive(Debug, Clone)]
struct Member {
    zip_index: usize,
    /// Bytes of magic + version + length + header dict before the data.
    data_offset: u64,
    fortran: bool,
    big_endian: bool,
}

/// An open `.npz` archive.
pub struct NpzReader {
    path: PathBuf,
    archive: ZipArchive<BufReader<File>>,
    tensors: Vec<TensorInfo>,
    members: Vec<Member>,
}

impl std::fmt::Debug for NpzReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpzReader").field("path", &self.path).field("tensors", &self.tensors).finish()
    }
}

pub(crate) fn zip_err(path: &Path, what: &str, e: zip::result::ZipError) -> StoreError {
    match e {
        zip::result::ZipError::Io(io) => StoreError::io(path, io),
        other => StoreError::format(path, None, format!("{what}: {other}")),
    }
}

/// Opens an `.npz` archive and parses every member's `.npy` header.
pub fn open_npz(path: &Path) -> Result<NpzReader> {
    let f = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut archive = ZipArchive::new(BufReader::new(f)).map_err(|e| zip_err(path, "not a valid zip archive", e))?;
    let mut tensors = Vec::new();
    let mut members = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| zip_err(path, "zip member", e))?;
        let name = entry.name().map_err(|e| zip_err(path, "zip member name", e))?.into_owned();
        if entry.is_dir() {
            continue;
        }
        let Some(tname) = name.strip_suffix(".npy") else {
            return Err(StoreError::format(path, None, format!("member '{name}' is not a .npy array")));
        };
        let size = entry.size();
        let ctx = format!("member '{name}'");
        let h = parse_npy_header(&mut entry, path, &ctx)?;
        let len = checked_byte_len(&h.shape, h.dtype.size())
            .ok_or_else(|| StoreError::format(path, None, format!("{ctx}: shape {:?} overflows", h.shape)))?;
        if size != h.data_offset.saturating_add(len) {
            return Err(StoreError::format(
                path,
                None,
                format!(
                    "{ctx}: header says {} bytes of data (shape {:?}, {}) but the member holds {}: truncated or lying header",
                    len,
                    h.shape,
                    h.dtype,
                    size.saturating_sub(h.data_offset)
                ),
            ));
        }
        let shape = h
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| StoreError::format(path, None, format!("{ctx}: dimension too large")))?;
        tensors.push(TensorInfo { name: tname.to_string(), dtype: h.dtype, shape });
        members.push(Member {
            zip_index: i,
            data_offset: h.data_offset,
            fortran: h.fortran,
            big_endian: h.big_endian,
        });
    }
    Ok(NpzReader { path: path.to_path_buf(), archive, tensors, members })
}

/// What a `.npy` header says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NpyHeader {
    pub(crate) dtype: DType,
    pub(crate) big_endian: bool,
    pub(crate) fortran: bool,
    pub(crate) shape: Vec<u64>,
    pub(crate) data_offset: u64,
}

/// Reads the `.npy` preamble and header dict from the start of a member.
pub(crate) fn parse_npy_header(r: &mut dyn Read, path: &Path, ctx: &str) -> Result<NpyHeader> {
    let err = |msg: String| StoreError::format(path, None, format!("{ctx}: {msg}"));
    let mut pre = [0u8; 8];
    read_full(r, &mut pre, path).and_then(|n| if n == 8 { Ok(()) } else { Err(err("truncated .npy preamble".into())) })?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(err("missing .npy magic".into()));
    }
    let major = pre[6];
    let (hlen, pre_len) = match major {
        1 => {
            let mut b = [0u8; 2];
            if read_full(r, &mut b, path)? != 2 {
                return Err(err("truncated .npy header length".into()));
            }
            (u64::from(u16::from_le_bytes(b)), 10u64)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            if read_full(r, &mut b, path)? != 4 {
                return Err(err("truncated .npy header length".into()));
            }
            (u64::from(u32::from_le_bytes(b)), 12u64)
        }
        v => return Err(err(format!("unsupported .npy format version {v}"))),
    };
    if hlen > MAX_NPY_HEADER {
        return Err(err(format!(".npy header length {hlen} is implausibly large")));
    }
    let mut hdr = Vec::new();
    r.take(hlen).read_to_end(&mut hdr).map_err(|e| StoreError::io(path, e))?;
    if hdr.len() as u64 != hlen {
        return Err(err("truncated .npy header".into()));
    }
    // v1/v2 headers are latin-1, v3 utf-8; the keys and values we need are ASCII either way.
    let text = String::from_utf8_lossy(&hdr);
    let dict = pydict::parse(&text).map_err(|m| err(format!("bad .npy header {text:?}: {m}")))?;
    let descr = dict.descr.ok_or_else(|| err("header has no 'descr' string".into()))?;
    let (dtype, big_endian) = parse_descr(&descr).ok_or_else(|| err(format!("unsupported dtype descr '{descr}'")))?;
    let shape = dict.shape.ok_or_else(|| err("header has no 'shape' tuple".into()))?;
    Ok(NpyHeader {
        dtype,
        big_endian,
        fortran: dict.fortran_order.unwrap_or(false),
        shape,
        data_offset: pre_len + hlen,
    })
}

fn read_full(r: &mut dyn Read, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StoreError::io(path, e)),
        }
    }
    Ok(n)
}

/// `'<f4'` -> (F32, little-endian).
fn parse_descr(d: &str) -> Option<(DType, bool)> {
    let (order, code) = match d.as_bytes().first()? {
        b'<' | b'=' | b'|' => (false, &d[1..]),
        b'>' => (true, &d[1..]),
        _ => (false, d),
    };
    let dt = match code {
        "f8" => DType::F64,
        "f4" => DType::F32,
        "f2" => DType::F16,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i2" => DType::I16,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        _ => return None,
    };
    Some((dt, order && dt.size() > 1))
}

/// The tiny subset of Python literal syntax used by `.npy` headers:
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
mod pydict {
    #[derive(Default)]
    pub(super) struct Dict {
        pub(super) descr: Option<String>,
        pub(super) fortran_order: Option<bool>,
        pub(super) shape: Option<Vec<u64>>,
    }

    struct P<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl P<'_> {
        fn ws(&mut self) {
            while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
                self.i += 1;
            }
        }
        fn peek(&mut self) -> Option<u8> {
            self.ws();
            self.s.get(self.i).copied()
        }
        fn eat(&mut self, c: u8) -> bool {
            if self.peek() == Some(c) {
                self.i += 1;
                true
            } else {
                false
            }
        }
        fn expect(&mut self, c: u8) -> Result<(), String> {
            if self.eat(c) { Ok(()) } else { Err(format!("expected '{}' at {}", c as char, self.i)) }
        }
        fn string(&mut self) -> Result<String, String> {
            let q = self.peek().ok_or("unexpected end")?;
            if q != b'\'' && q != b'"' {
                return Err(format!("expected a string at {}", self.i));
            }
            self.i += 1;
            let start = self.i;
            while let Some(&c) = self.s.get(self.i) {
                if c == q {
                    let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                    self.i += 1;
                    return Ok(out);
                }
                self.i += 1;
            }
            Err("unterminated string".into())
        }
        fn word(&mut self) -> String {
            self.ws();
            let start = self.i;
            while self.s.get(self.i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                self.i += 1;
            }
            String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
        }
        fn tuple(&mut self) -> Result<Vec<u64>, String> {
            self.expect(b'(')?;
            let mut out = Vec::new();
            loop {
                if self.eat(b')') {
                    return Ok(out);
                }
                let w = self.word();
                let w = w.strip_suffix('L').unwrap_or(&w);
                out.push(w.parse::<u64>().map_err(|_| format!("bad dimension '{w}'"))?);
                if out.len() > 64 {
                    return Err("more than 64 dimensions".into());
                }
                if !self.eat(b',') {
                    self.expect(b')')?;
                    return Ok(out);
                }
            }
        }
    }

    pub(super) fn parse(text: &str) -> Result<Dict, String> {
        let mut p = P { s: text.as_bytes(), i: 0 };
        let mut d = Dict::default();
        p.expect(b'{')?;
        loop {
            if p.eat(b'}') {
                return Ok(d);
            }
            let key = p.string()?;
            p.expect(b':')?;
            match key.as_str() {
                "descr" => {
                    if p.peek() == Some(b'[') {
                        return Err("structured dtypes are not supported".into());
                    }
                    d.descr = Some(p.string()?);
                }
                "fortran_order" => {
                    d.fortran_order = Some(match p.word().as_str() {
                        "True" => true,
                        "False" => false,
                        w => return Err(format!("fortran_order must be True or False, not '{w}'")),
                    })
                }
                "shape" => d.shape = Some(p.tuple()?),
                other => return Err(format!("unexpected key '{other}'")),
            }
            if !p.eat(b',') {
                p.expect(b'}')?;
                return Ok(d);
            }
        }
    }
}

impl TensorSource for NpzReader {
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn read_tensor(&mut self, index: usize, out: &mut dyn Write) -> Result<u64> {
        let (Some(info), Some(m)) = (self.tensors.get(index), self.members.get(index).cloned()) else {
            return Err(StoreError::Invalid(format!("{}: no tensor #{index}", self.path.display())));
        };
        let path = self.path.as_path();
        let mut entry = self.archive.by_index(m.zip_index).map_err(|e| zip_err(path, "zip member", e))?;
        let what = format!("tensor '{}'", info.name);
        skip_exact(&mut entry, m.data_offset, path, &what)?;
        let len = info.byte_len();
        let elem = info.dtype.size();
        if m.fortran && info.shape.len() > 1 {
            let mut data = Vec::new();
            (&mut entry).take(len).read_to_end(&mut data).map_err(|e| StoreError::io(path, e))?;
            if data.len() as u64 != len {
                return Err(StoreError::format(path, None, format!("{what}: member ends early")));
            }
            if m.big_endian {
                swap_in_place(&mut data, elem);
            }
            let c = fortran_to_c(&data, &info.shape, elem);
            out.write_all(&c).map_err(|e| StoreError::io(path, e))?;
            return Ok(len);
        }
        if !m.big_endian {
            return copy_exact(&mut entry, out, len, path, None, &what);
        }
        let mut swapper = SwapWriter { inner: out, elem, pending: Vec::with_capacity(CHUNK) };
        let n = copy_exact(&mut entry, &mut swapper, len, path, None, &what)?;
        swapper.finish().map_err(|e| StoreError::io(path, e))?;
        Ok(n)
    }
}

fn swap_in_place(data: &mut [u8], elem: usize) {
    if elem > 1 {
        for c in data.chunks_exact_mut(elem) {
            c.reverse();
        }
    }
}

/// Byte-swaps whole elements on the way through; keeps a partial element between writes.
struct SwapWriter<'a> {
    inner: &'a mut dyn Write,
    elem: usize,
    pending: Vec<u8>,
}

impl SwapWriter<'_> {
    fn finish(&mut self) -> std::io::Result<()> {
        // A partial element at the end cannot happen when the length is a multiple of elem.
        let mut rest = std::mem::take(&mut self.pending);
        swap_in_place(&mut rest, self.elem);
        self.inner.write_all(&rest)
    }
}

impl Write for SwapWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let whole = self.pending.len() - self.pending.len() % self.elem;
        if whole > 0 {
            swap_in_place(&mut self.pending[..whole], self.elem);
            self.inner.write_all(&self.pending[..whole])?;
            self.pending.drain(..whole);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reorders a Fortran-order array (first index fastest) into C order (last index fastest).
pub(crate) fn fortran_to_c(data: &[u8], shape: &[usize], elem: usize) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(data.len());
    // Fortran strides, in elements.
    let mut fstride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        let src: usize = idx.iter().zip(&fstride).map(|(i, s)| i * s).sum();
        if let Some(bytes) = data.get(src * elem..(src + 1) * elem) {
            out.extend_from_slice(bytes);
        }
        // Increment the C-order multi-index (last dimension fastest).
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers() {
        let d = pydict::parse("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }").ok();
        let d = d.as_ref();
        assert_eq!(d.and_then(|d| d.descr.clone()).as_deref(), Some("<f4"));
        assert_eq!(d.and_then(|d| d.shape.clone()), Some(vec![3, 4]));
        let d = pydict::parse("{'descr': '>i8', 'fortran_order': True, 'shape': (5,), }").ok();
        assert_eq!(d.and_then(|d| d.shape), Some(vec![5]));
        let d = pydict::parse("{'descr': '|u1', 'fortran_order': False, 'shape': (), }").ok();
        assert_eq!(d.and_then(|d| d.shape), Some(vec![]));
        assert!(pydict::parse("{'descr': [('a', '<f4')], 'shape': ()}").is_err());
        assert!(pydict::parse("{'descr': '<f4', 'shape': (3,").is_err());
        assert_eq!(parse_descr(">f4"), Some((DType::F32, true)));
        assert_eq!(parse_descr("|b1"), Some((DType::Bool, false)));
        assert_eq!(parse_descr("<u4"), None);
    }

    #[test]
    fn transposes_fortran() {
        // 2x3 matrix [[0,1,2],[3,4,5]] stored column-major: 0 3 1 4 2 5.
        let f = [0u8, 3, 1, 4, 2, 5];
        assert_eq!(fortran_to_c(&f, &[2, 3], 1), vec![0, 1, 2, 3, 4, 5]);
    }
}
