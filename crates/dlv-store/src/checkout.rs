//! Materialising a version as files: the prototxt, a safetensors file, the associated files.
//!
//! Every file is written to a temporary name in the destination folder and renamed once its
//! objects have been read and verified, so a corrupt object never leaves a plausible file behind.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use crate::commit::Progress;
use crate::formats;
use crate::record::{TensorEntry, VersionRecord};
use crate::repo::Repository;
use crate::{DType, Result, StoreError, TensorInfo};

/// Precision of the checked-out float tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// As stored, bit-identical.
    #[default]
    Full,
    /// fp32 tensors as bf16: the top two bytes of each value (truncation, as the high-order
    /// byte planes give it).
    Bf16,
    /// fp32 tensors as IEEE fp16, rounded to nearest.
    Fp16,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Precision> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "full" | "f32" => Some(Precision::Full),
            "bf16" => Some(Precision::Bf16),
            "fp16" | "f16" => Some(Precision::Fp16),
            _ => None,
        }
    }
}

/// What checkout wrote.
#[derive(Debug, Clone, Default)]
pub struct CheckoutOutcome {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

impl Repository {
    /// Writes version `id` into `dir`. Existing files are replaced only with `force`.
    pub fn checkout(
        &self,
        id: &str,
        dir: &Path,
        precision: Precision,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<CheckoutOutcome> {
        let record = self.get(id)?;
        fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let mut plan: Vec<(PathBuf, FileWriter<'_>)> = Vec::new();

        if let Some(net) = &record.network {
            match &net.source {
                Some(src) => {
                    let name = file_name_of(&src.path, &format!("{}.prototxt", record.name));
                    let obj = src.object.clone();
                    plan.push((dir.join(name), Box::new(move |w| self.objects().get_into(&obj, w))));
                }
                None => {
                    let text = self.network(&record)?.map(|n| n.to_prototxt()).unwrap_or_default();
                    plan.push((
                        dir.join(format!("{}.prototxt", safe_component(&record.name))),
                        Box::new(move |w| {
                            w.write_all(text.as_bytes()).map_err(|e| StoreError::io("<output>", e))?;
                            Ok(text.len() as u64)
                        }),
                    ));
                }
            }
        }
        for f in &record.files {
            let rel = safe_relative(&f.path)?;
            let obj = f.object.clone();
            plan.push((dir.join(rel), Box::new(move |w| self.objects().get_into(&obj, w))));
        }

        let mut out = CheckoutOutcome::default();
        for (path, _) in &plan {
            if path.exists() && !force {
                return Err(StoreError::Invalid(format!(
                    "{} exists; use --force to overwrite",
                    path.display()
                )));
            }
        }
        let weights_path = record
            .weights_file
            .as_ref()
            .map(|w| dir.join(file_name_of(w, &format!("{}.safetensors", record.name))));
        if let Some(p) = &weights_path {
            if p.exists() && !force {
                return Err(StoreError::Invalid(format!("{} exists; use --force to overwrite", p.display())));
            }
        }
        for (path, write) in plan {
            out.bytes += write_atomically(&path, &*write)?;
            out.files.push(path);
        }
        if let Some(path) = weights_path {
            out.bytes += self.write_weights(&record, &path, precision, progress)?;
            out.files.push(path);
        }
        Ok(out)
    }

    /// The version's DAG, if it has a network.
    pub fn network(&self, record: &VersionRecord) -> Result<Option<dlv_graph::Net>> {
        let Some(n) = &record.network else { return Ok(None) };
        let bytes = self.objects().get_bytes(&n.dag)?;
        let text = String::from_utf8(bytes).map_err(|_| StoreError::CorruptObject {
            id: n.dag.clone(),
            msg: "network object is not UTF-8".into(),
        })?;
        Ok(Some(dlv_graph::Net::from_json(&text)?))
    }

    /// Streams one tensor's bytes at the requested precision. For bf16 from fp32 only the top
    /// two byte planes of each chunk are read (along XOR delta chains too; a chunk coded as an
    /// integer difference needs its base in full, since carries cross planes).
    pub fn read_tensor(&self, t: &TensorEntry, precision: Precision, out: &mut dyn Write) -> Result<u64> {
        let dtype = DType::parse(&t.dtype).ok_or_else(|| StoreError::CorruptMeta {
            what: format!("tensor {}", t.name),
            msg: format!("unknown dtype {}", t.dtype),
        })?;
        if dtype != DType::F32 || precision == Precision::Full {
            return self.objects().get_into(&t.object, out);
        }
        if precision == Precision::Bf16 {
            // bf16 by truncation is exactly the top two byte planes: read only those.
            return self.objects().get_top_into(&t.object, 4, 2, out);
        }
        // fp16 rounds to nearest (and may go subnormal), which depends on every mantissa bit:
        // a full read.
        let mut conv = Narrowing { out, precision, carry: Vec::with_capacity(4), written: 0 };
        self.objects().get_into(&t.object, &mut conv)?;
        Ok(conv.written)
    }

    fn write_weights(&self, record: &VersionRecord, path: &Path, precision: Precision, progress: &dyn Progress) -> Result<u64> {
        if precision == Precision::Full {
            if let Some(order) = self.original_layout(record)? {
                let header = record.weights_header.clone().unwrap_or_default();
                let total: u64 = record.tensors.iter().map(|t| t.bytes).sum();
                progress.begin(&format!("writing {}", path.display()), total);
                let written = write_atomically(path, &|w| {
                    let mut n = self.objects().get_into(&header, w)?;
                    // A window of tensors (one per thread) is decoded in parallel into memory,
                    // then written in order; a tensor over PARALLEL_DECODE_MAX bytes is streamed
                    // on its own, so memory stays bounded.
                    for window in order.chunks(rayon::current_num_threads().max(1)) {
                        let decoded: Vec<Option<Result<Vec<u8>>>> = window
                            .par_iter()
                            .map(|&i| {
                                let t = &record.tensors[i];
                                (window.len() > 1 && t.bytes <= PARALLEL_DECODE_MAX).then(|| self.objects().get_bytes(&t.object))
                            })
                            .collect();
                        for (&i, bytes) in window.iter().zip(decoded) {
                            let k = match bytes {
                                Some(b) => {
                                    let b = b?;
                                    w.write_all(&b).map_err(|e| StoreError::io("<output>", e))?;
                                    b.len() as u64
                                }
                                None => self.objects().get_into(&record.tensors[i].object, w)?,
                            };
                            progress.advance(k);
                            n += k;
                        }
                    }
                    Ok(n)
                });
                progress.end();
                return written;
            }
        }
        let infos: Vec<TensorInfo> = record
            .tensors
            .iter()
            .map(|t| {
                let dtype = DType::parse(&t.dtype).ok_or_else(|| StoreError::CorruptMeta {
                    what: format!("tensor {}", t.name),
                    msg: format!("unknown dtype {}", t.dtype),
                })?;
                let dtype = match (dtype, precision) {
                    (DType::F32, Precision::Bf16) => DType::BF16,
                    (DType::F32, Precision::Fp16) => DType::F16,
                    (d, _) => d,
                };
                Ok(TensorInfo {
                    name: t.name.clone(),
                    dtype,
                    shape: t.shape.iter().map(|&d| d as usize).collect(),
                })
            })
            .collect::<Result<_>>()?;
        let total: u64 = infos.iter().map(|t| t.byte_len()).sum();
        progress.begin(&format!("writing {}", path.display()), total);
        let mut meta = BTreeMap::new();
        meta.insert("dlv.name".to_string(), record.name.clone());
        let result = formats::write_safetensors(path, &infos, Some(&meta), &mut |i, w| {
            let t = &record.tensors[i];
            let n = self.read_tensor(t, precision, w)?;
            progress.advance(n);
            Ok(n)
        });
        progress.end();
        result?;
        Ok(total)
    }
}

/// Writes one checked-out file's content, returning its length.
type FileWriter<'a> = Box<dyn Fn(&mut dyn Write) -> Result<u64> + 'a>;

/// Largest tensor a checkout decodes into memory to decode it beside others (see
/// `write_weights`).
const PARALLEL_DECODE_MAX: u64 = 64 << 20;

impl Repository {
    /// Tensor indexes in the data order of the original safetensors file, when its stored
    /// header describes exactly the record's tensors (then header + data rebuild the file).
    fn original_layout(&self, record: &VersionRecord) -> Result<Option<Vec<usize>>> {
        let Some(hid) = &record.weights_header else { return Ok(None) };
        let bytes = self.objects().get_bytes(hid)?;
        let Some(json) = bytes.get(8..) else { return Ok(None) };
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(json) else {
            return Ok(None);
        };
        let mut order: Vec<(u64, u64, usize)> = Vec::new();
        for (name, v) in &map {
            if name == "__metadata__" {
                continue;
            }
            let Some(i) = record.tensors.iter().position(|t| &t.name == name) else { return Ok(None) };
            let offs = v.get("data_offsets").and_then(|o| o.as_array());
            let (Some(b), Some(e)) = (
                offs.and_then(|o| o.first()).and_then(|x| x.as_u64()),
                offs.and_then(|o| o.get(1)).and_then(|x| x.as_u64()),
            ) else {
                return Ok(None);
            };
            order.push((b, e, i));
        }
        if order.len() != record.tensors.len() {
            return Ok(None);
        }
        order.sort();
        let mut at = 0;
        for &(b, e, i) in &order {
            if b != at || e < b || e - b != record.tensors[i].bytes {
                return Ok(None);
            }
            at = e;
        }
        Ok(Some(order.into_iter().map(|(_, _, i)| i).collect()))
    }
}

/// Writes to `path` through a temporary sibling, renamed only on success.
fn write_atomically(path: &Path, write: &dyn Fn(&mut dyn Write) -> Result<u64>) -> Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| StoreError::io(dir, e))?;
    let n = {
        let mut w = io::BufWriter::new(tmp.as_file_mut());
        let n = write(&mut w)?;
        w.flush().map_err(|e| StoreError::io(path, e))?;
        n
    };
    tmp.as_file().sync_all().map_err(|e| StoreError::io(path, e))?;
    tmp.persist(path).map_err(|e| StoreError::io(path, e.error))?;
    Ok(n)
}

/// The last component of a stored path, or `fallback` if it has none usable.
fn file_name_of(stored: &str, fallback: &str) -> String {
    Path::new(stored)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .filter(|n| !n.is_empty() && n != ".." && n != ".")
        .unwrap_or_else(|| safe_component(fallback))
}

fn safe_component(s: &str) -> String {
    s.chars().map(|c| if c == '/' || c == '\\' || c == '\0' { '_' } else { c }).collect()
}

/// A stored relative path, refused if it could escape the destination.
fn safe_relative(stored: &str) -> Result<PathBuf> {
    let p = Path::new(stored);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            _ => {
                return Err(StoreError::CorruptMeta {
                    what: "associated file".into(),
                    msg: format!("unsafe path '{stored}'"),
                })
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(StoreError::CorruptMeta { what: "associated file".into(), msg: "empty path".into() });
    }
    Ok(out)
}

/// Converts a stream of fp32 little-endian values to bf16 (truncated) or fp16 (rounded).
struct Narrowing<'a> {
    out: &'a mut dyn Write,
    precision: Precision,
    carry: Vec<u8>,
    written: u64,
}

impl Write for Narrowing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(buf);
        let whole = data.len() / 4 * 4;
        let mut converted = Vec::with_capacity(whole / 2);
        for c in data[..whole].chunks_exact(4) {
            let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let half_bits = match self.precision {
                Precision::Bf16 => (bits >> 16) as u16,
                Precision::Fp16 => half::f16::from_f32(f32::from_bits(bits)).to_bits(),
                Precision::Full => 0,
            };
            converted.extend_from_slice(&half_bits.to_le_bytes());
        }
        self.out.write_all(&converted)?;
        self.written += converted.len() as u64;
        self.carry = data[whole..].to_vec();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
