//! Readers of what `dlv add` understands: weights (safetensors, PyTorch, NumPy, Caffe), solver
//! hyper-parameters and training logs; and the streaming safetensors writer used by checkout.
//!
//! Weights formats, all read through [`TensorSource`] (tensors in file order, each streamed out
//! as little-endian C-order bytes in bounded chunks):
//! - **safetensors** ([`safetensors`]): header parsed and validated by hand, data copied with
//!   seeks and 1 MiB chunks; no mmap, never the whole file in memory. Also the writer
//!   [`write_safetensors`].
//! - **NumPy `.npz`** ([`npz`]): zip (stored or deflated) of `.npy` v1/v2/v3 members.
//! - **PyTorch `.pt`/`.pth`/`.bin`** ([`torch`]): the zip format of `torch.save` since 1.6,
//!   with a minimal, bounded pickle VM. The legacy (pre-1.6, non-zip) format is refused.
//! - **Caffe `.caffemodel`** ([`caffemodel`]): binary `NetParameter`, decoded by a streaming
//!   protobuf wire reader that records where each blob's values lie and seeks back to them.
//!
//! Every reader treats file contents as untrusted: no `unwrap`/panic reachable from input, no
//! allocation sized by a header field that was not first checked against the file's real size,
//! and errors are [`StoreError::Format`] naming the file, a byte offset where one is known, and
//! the problem.
//!
//! Also here: [`match_tensors`] (tensor names to network layers), [`read_solver`] /
//! [`read_toml_config`] (hyper-parameters) and [`read_caffe_log`] / [`read_jsonl_metrics`]
//! (metric series).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use crate::{Result, StoreError, TensorInfo};

pub mod caffemodel;
pub mod log;
pub mod matching;
pub mod npz;
pub mod safetensors;
pub mod solver;
pub mod torch;

pub use caffemodel::{caffe_blob_name, open_caffemodel, CaffemodelReader};
pub use log::{is_caffe_log, read_caffe_log, read_jsonl_metrics, Series};
pub use matching::{match_tensors, MatchReport, ShapeMismatch, TensorMatch};
pub use npz::{open_npz, NpzReader};
pub use safetensors::{open_safetensors, write_safetensors, SafetensorsReader};
pub use solver::{read_solver, read_toml_config, HyperValue};
pub use torch::{open_torch, TorchReader};

/// A weights file opened for streaming: its tensor list, and each tensor's bytes on demand.
pub trait TensorSource {
    /// Tensors in file order.
    fn tensors(&self) -> &[TensorInfo];
    /// Streams tensor `index`'s raw little-endian bytes (C order, exactly `byte_len()` bytes)
    /// into `out`, in bounded chunks. Returns bytes written.
    fn read_tensor(&mut self, index: usize, out: &mut dyn Write) -> Result<u64>;
}

/// The weights formats that [`open_weights`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    Npz,
    Torch,
    Caffemodel,
}

/// Size of the copy buffer used by every reader.
pub(crate) const CHUNK: usize = 1 << 20;

const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";
/// Empty zip archive (end of central directory only); still a zip for sniffing purposes.
const ZIP_EMPTY_MAGIC: &[u8; 4] = b"PK\x05\x06";

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default()
}

fn read_prefix(path: &Path, n: usize) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut buf = Vec::with_capacity(n);
    file.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| StoreError::io(path, e))?;
    Ok(buf)
}

/// Whether the first bytes look like a safetensors file: a plausible header length followed by
/// `{`.
fn looks_like_safetensors(prefix: &[u8]) -> bool {
    match (prefix.get(..8), prefix.get(8)) {
        (Some(len), Some(b'{')) => {
            let mut l = [0u8; 8];
            l.copy_from_slice(len);
            let n = u64::from_le_bytes(l);
            (2..=safetensors::MAX_HEADER_LEN).contains(&n)
        }
        _ => false,
    }
}

fn is_zip(prefix: &[u8]) -> bool {
    prefix.starts_with(ZIP_MAGIC) || prefix.starts_with(ZIP_EMPTY_MAGIC)
}

/// Decides the format of a weights file from its magic bytes and extension, or `None`.
pub fn detect_weights_format(path: &Path) -> Result<Option<WeightsFormat>> {
    let prefix = read_prefix(path, 16)?;
    let ext = extension(path);
    if looks_like_safetensors(&prefix) {
        return Ok(Some(WeightsFormat::Safetensors));
    }
    if is_zip(&prefix) {
        // Both npz and torch files are zips; torch archives hold a `data.pkl`.
        return Ok(match ext.as_str() {
            "npz" => Some(WeightsFormat::Npz),
            "pt" | "pth" | "bin" | "ckpt" => Some(WeightsFormat::Torch),
            _ => match torch::zip_has_data_pkl(path) {
                Ok(true) => Some(WeightsFormat::Torch),
                Ok(false) => Some(WeightsFormat::Npz),
                Err(_) => None,
            },
        });
    }
    Ok(match ext.as_str() {
        "caffemodel" => Some(WeightsFormat::Caffemodel),
        "safetensors" => Some(WeightsFormat::Safetensors),
        "pt" | "pth" => Some(WeightsFormat::Torch),
        "npz" => Some(WeightsFormat::Npz),
        _ => None,
    })
}

/// Opens a weights file of any supported format, chosen by magic bytes and extension.
pub fn open_weights(path: &Path) -> Result<Box<dyn TensorSource + Send>> {
    match detect_weights_format(path)? {
        Some(WeightsFormat::Safetensors) => Ok(Box::new(open_safetensors(path)?)),
        Some(WeightsFormat::Npz) => Ok(Box::new(open_npz(path)?)),
        Some(WeightsFormat::Torch) => Ok(Box::new(open_torch(path)?)),
        Some(WeightsFormat::Caffemodel) => Ok(Box::new(open_caffemodel(path)?)),
        None => Err(StoreError::format(
            path,
            None,
            "not a weights file this dlv can read (supported: safetensors, .npz, PyTorch .pt/.pth zip, .caffemodel)",
        )),
    }
}

/// Cheap classification used by `dlv add`: a known weights extension whose first bytes agree,
/// or any file whose first bytes are a safetensors header. Reads at most 16 bytes (plus the
/// zip directory for an unknown-extension zip).
pub fn is_weights_file(path: &Path) -> bool {
    let Ok(prefix) = read_prefix(path, 16) else {
        return false;
    };
    let ext = extension(path);
    match ext.as_str() {
        "safetensors" => looks_like_safetensors(&prefix),
        "npz" => is_zip(&prefix),
        "pt" | "pth" => is_zip(&prefix),
        "bin" | "ckpt" => {
            looks_like_safetensors(&prefix)
                || (is_zip(&prefix) && torch::zip_has_data_pkl(path).unwrap_or(false))
        }
        "caffemodel" => !prefix.is_empty(),
        _ => looks_like_safetensors(&prefix),
    }
}

/// Copies exactly `len` bytes from `src` to `out` through a bounded buffer. A short source is a
/// format error at `offset + copied` (the file ended early or changed under us).
pub(crate) fn copy_exact(
    src: &mut dyn Read,
    out: &mut dyn Write,
    len: u64,
    path: &Path,
    offset: Option<u64>,
    what: &str,
) -> Result<u64> {
    let mut buf = vec![0u8; (len.min(CHUNK as u64)) as usize];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done).min(buf.len() as u64)) as usize;
        let got = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(StoreError::format(
                    path,
                    offset.map(|o| o + done),
                    format!("{what}: data ends after {done} of {len} bytes"),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::io(path, e)),
        };
        out.write_all(&buf[..got]).map_err(|e| StoreError::io(path, e))?;
        done += got as u64;
    }
    Ok(done)
}

/// Reads and throws away `len` bytes (used to skip to a position in a compressed stream).
pub(crate) fn skip_exact(src: &mut dyn Read, len: u64, path: &Path, what: &str) -> Result<()> {
    copy_exact(src, &mut std::io::sink(), len, path, None, what).map(|_| ())
}

/// Converts a shape from a header to `usize`s and checks that its byte length fits in `u64`.
pub(crate) fn checked_byte_len(dims: &[u64], elem: usize) -> Option<u64> {
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(elem as u64))
}

/// A `Write` adapter that counts the bytes that pass through it.
pub(crate) struct CountingWriter<'a> {
    pub(crate) inner: &'a mut dyn Write,
    pub(crate) count: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_exact_reports_short_input() {
        let data = [1u8, 2, 3];
        let mut out = Vec::new();
        let err = copy_exact(&mut &data[..], &mut out, 5, Path::new("x"), Some(10), "t")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("at byte 13"), "{err}");
    }

    #[test]
    fn byte_len_overflow_is_none() {
        assert_eq!(checked_byte_len(&[u64::MAX, 2], 1), None);
        assert_eq!(checked_byte_len(&[3, 4], 4), Some(48));
        assert_eq!(checked_byte_len(&[], 4), Some(4));
    }
}
