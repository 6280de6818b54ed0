//! PyTorch `state_dict` reader for the zip format of `torch.save` (PyTorch 1.6 and later):
//! `<prefix>/data.pkl` (a pickle) plus one member `<prefix>/data/<key>` per storage, and
//! optionally `<prefix>/byteorder` (`little` or `big`). The prefix folder name varies
//! (`archive`, or the file stem in older versions); it is whatever precedes `data.pkl`.
//!
//! The pickle is run by a minimal VM that knows only what `torch.save` emits (protocol 2, and the
//! protocol 4 framing opcodes). Objects live in an arena, so values are flat and cheap to copy,
//! cycles and deep nesting cannot overflow the stack, and memory is bounded by the pickle size.
//! It recognises `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor` (tensors),
//! `torch._utils._rebuild_parameter` (parameters), persistent ids
//! `('storage', torch.XStorage, key, location, numel)` and `collections.OrderedDict`; every
//! other global yields an opaque value that is ignored unless it is where a tensor was
//! expected. `BUILD` state is ignored, which drops `state_dict._metadata`.
//!
//! Tensors are found by walking the unpickled object: dicts are flattened with `.`-joined keys
//! (`{"state_dict": {"conv1.weight": t}}` gives `state_dict.conv1.weight`), lists and tuples
//! by index. Non-contiguous tensors (strides other than C order) are refused with an error
//! naming the tensor; re-save them with `.contiguous()`. The legacy pre-1.6 format (a bare
//! pickle stream) is refused.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use super::npz::zip_err;
use super::{checked_byte_len, copy_exact, skip_exact, TensorSource};
use crate::{DType, Result, StoreError, TensorInfo};

/// Largest `data.pkl` read (the pickle of a state dict is small; the tensors are elsewhere).
const MAX_PICKLE: u64 = 256 << 20;
/// How deep the tensor walk follows nested containers.
const MAX_DEPTH: usize = 64;
/// Bound on containers visited and tensors found by the walk.
const MAX_VISITS: usize = 1 << 20;

#[derive(Debug, Clone)]
struct TensorLoc {
    zip_index: usize,
    /// Byte offset of the tensor inside its storage member.
    byte_offset: u64,
}

/// An open PyTorch zip checkpoint.
pub struct TorchReader {
    path: PathBuf,
    archive: ZipArchive<BufReader<File>>,
    big_endian: bool,
    tensors: Vec<TensorInfo>,
    locs: Vec<TensorLoc>,
}

impl std::fmt::Debug for TorchReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchReader").field("path", &self.path).field("tensors", &self.tensors).finish()
    }
}

/// Whether a zip file holds a `data.pkl` member (the mark of a torch checkpoint).
pub(crate) fn zip_has_data_pkl(path: &Path) -> Result<bool> {
    let f = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let archive = ZipArchive::new(BufReader::new(f)).map_err(|e| zip_err(path, "not a valid zip archive", e))?;
    let found = archive.file_names().flatten().any(|n| n == "data.pkl" || n.ends_with("/data.pkl"));
    Ok(found)
}

/// Opens a PyTorch zip checkpoint and locates every tensor in it.
pub fn open_torch(path: &Path) -> Result<TorchReader> {
    let f = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut magic = [0u8; 2];
    {
        let mut r = &f;
        let n = r.read(&mut magic).map_err(|e| StoreError::io(path, e))?;
        if n == 2 && magic == [0x80, 0x02] {
            return Err(StoreError::format(
                path,
                Some(0),
                "legacy (pre-1.6) PyTorch pickle format is not supported; re-save with torch.save(..., _use_new_zipfile_serialization=True)",
            ));
        }
    }
    let mut archive = ZipArchive::new(BufReader::new(f)).map_err(|e| zip_err(path, "not a valid zip archive", e))?;
    let pkl_name = archive
        .file_names()
        .flatten()
        .filter(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(|n| n.into_owned())
        .ok_or_else(|| StoreError::format(path, None, "zip archive has no data.pkl: not a PyTorch checkpoint"))?;
    let prefix = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_string();

    let big_endian = match archive.index_for_name(&format!("{prefix}byteorder")) {
        Some(i) => {
            let mut e = archive.by_index(i).map_err(|e| zip_err(path, "byteorder", e))?;
            let mut s = String::new();
            (&mut e).take(16).read_to_string(&mut s).map_err(|e| StoreError::io(path, e))?;
            match s.trim() {
                "little" => false,
                "big" => true,
                other => return Err(StoreError::format(path, None, format!("unknown byteorder '{other}'"))),
            }
        }
        None => false,
    };

    let pickle = {
        let i = archive
            .index_for_name(&pkl_name)
            .ok_or_else(|| StoreError::format(path, None, "data.pkl vanished"))?;
        let mut e = archive.by_index(i).map_err(|e| zip_err(path, "data.pkl", e))?;
        if e.size() > MAX_PICKLE {
            return Err(StoreError::format(path, None, format!("{pkl_name} is {} bytes, over the {MAX_PICKLE} limit", e.size())));
        }
        let mut buf = Vec::new();
        (&mut e).take(MAX_PICKLE).read_to_end(&mut buf).map_err(|e| StoreError::io(path, e))?;
        buf
    };
    let mut vm = Vm::default();
    let root = vm
        .run(&pickle)
        .map_err(|(off, msg)| StoreError::format(path, None, format!("{pkl_name} at byte {off}: {msg}")))?;

    let mut w = Walk { vm: &vm, visiting: HashSet::new(), budget: MAX_VISITS, out: Vec::new() };
    walk(&mut w, root, String::new(), 0);
    let found = w.out;

    let mut tensors = Vec::with_capacity(found.len());
    let mut locs = Vec::with_capacity(found.len());
    for (name, t) in found {
        let name = if name.is_empty() { "tensor".to_string() } else { name };
        let (info, loc) = locate(&mut archive, path, &prefix, &name, &vm, t)?;
        tensors.push(info);
        locs.push(loc);
    }
    Ok(TorchReader { path: path.to_path_buf(), archive, big_endian, tensors, locs })
}

/// Checks a tensor against its storage member and works out where its bytes are.
fn locate(
    archive: &mut ZipArchive<BufReader<File>>,
    path: &Path,
    prefix: &str,
    name: &str,
    vm: &Vm,
    t: usize,
) -> Result<(TensorInfo, TensorLoc)> {
    let err = |msg: String| StoreError::format(path, None, format!("tensor '{name}': {msg}"));
    let Some(tensor) = vm.tensors.get(t) else {
        return Err(err("internal: bad tensor index".into()));
    };
    let Some(storage) = vm.storages.get(tensor.storage) else {
        return Err(err("internal: bad storage index".into()));
    };
    let dtype = storage.dtype;
    let elem = dtype.size() as u64;
    // C-contiguous strides; dimensions of size 1 may carry any stride.
    let mut expect = 1u64;
    for (k, (&d, &s)) in tensor.size.iter().zip(&tensor.stride).enumerate().rev() {
        if d != 1 && s != expect {
            return Err(err(format!(
                "non-contiguous layout (size {:?}, stride {:?}, dimension {k}); save it with .contiguous()",
                tensor.size, tensor.stride
            )));
        }
        expect = expect.saturating_mul(d);
    }
    let len = checked_byte_len(&tensor.size, dtype.size()).ok_or_else(|| err("shape overflows".into()))?;
    let byte_offset = tensor.offset.checked_mul(elem).ok_or_else(|| err("storage offset overflows".into()))?;
    let member = format!("{prefix}data/{}", storage.key);
    let zip_index = archive
        .index_for_name(&member)
        .ok_or_else(|| err(format!("storage member '{member}' is missing")))?;
    let size = archive.by_index(zip_index).map_err(|e| zip_err(path, &member, e))?.size();
    if byte_offset.saturating_add(len) > size {
        return Err(err(format!(
            "needs bytes {byte_offset}..{} of storage '{member}', which holds {size}: truncated file",
            byte_offset.saturating_add(len)
        )));
    }
    let shape = tensor
        .size
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| err("dimension too large".into()))?;
    Ok((TensorInfo { name: name.to_string(), dtype, shape }, TensorLoc { zip_index, byte_offset }))
}

/// Collects `(flattened name, tensor index)` for every tensor reachable from `v`.
/// Shared sub-objects are visited once per path; `MAX_VISITS` bounds the total work so that a
/// pickle of a wide DAG cannot explode.
struct Walk<'a> {
    vm: &'a Vm,
    visiting: HashSet<usize>,
    budget: usize,
    out: Vec<(String, usize)>,
}

fn walk(w: &mut Walk<'_>, v: Val, name: String, depth: usize) {
    if depth > MAX_DEPTH || w.budget == 0 {
        return;
    }
    w.budget -= 1;
    let vm = w.vm;
    let join = |k: &str| if name.is_empty() { k.to_string() } else { format!("{name}.{k}") };
    match v {
        Val::Tensor(t) => w.out.push((name, t)),
        Val::Obj(id) => {
            if !w.visiting.insert(id) {
                return;
            }
            match vm.objs.get(id) {
                Some(Obj::Dict(items)) => {
                    for (k, v) in items {
                        let key = match k {
                            Val::Str(s) => s.clone(),
                            Val::Int(i) => i.to_string(),
                            _ => continue,
                        };
                        walk(w, v.clone(), join(&key), depth + 1);
                    }
                }
                Some(Obj::List(items)) | Some(Obj::Tuple(items)) => {
                    for (i, v) in items.iter().enumerate() {
                        walk(w, v.clone(), join(&i.to_string()), depth + 1);
                    }
                }
                None => {}
            }
            w.visiting.remove(&id);
        }
        _ => {}
    }
}

impl TensorSource for TorchReader {
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn read_tensor(&mut self, index: usize, out: &mut dyn Write) -> Result<u64> {
        let (Some(info), Some(loc)) = (self.tensors.get(index), self.locs.get(index).cloned()) else {
            return Err(StoreError::Invalid(format!("{}: no tensor #{index}", self.path.display())));
        };
        let path = self.path.as_path();
        let mut entry = self.archive.by_index(loc.zip_index).map_err(|e| zip_err(path, "storage", e))?;
        let what = format!("tensor '{}'", info.name);
        skip_exact(&mut entry, loc.byte_offset, path, &what)?;
        let len = info.byte_len();
        let elem = info.dtype.size();
        if !self.big_endian || elem == 1 {
            return copy_exact(&mut entry, out, len, path, None, &what);
        }
        // Big-endian checkpoints are rare; swap element by element through a bounded buffer.
        let mut buf = vec![0u8; (super::CHUNK - super::CHUNK % elem).min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let want = ((len - done) as usize).min(buf.len());
            entry.read_exact(&mut buf[..want]).map_err(|_| {
                StoreError::format(path, None, format!("{what}: storage ends early"))
            })?;
            for c in buf[..want].chunks_exact_mut(elem) {
                c.reverse();
            }
            out.write_all(&buf[..want]).map_err(|e| StoreError::io(path, e))?;
            done += want as u64;
        }
        Ok(len)
    }
}

// ---------------------------------------------------------------------------------------------
// The pickle VM.

/// A pickled value. Containers live in [`Vm::objs`], so `Val` has no recursion.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes,
    Global(String, String),
    Obj(usize),
    Storage(usize),
    Tensor(usize),
    /// An object of a class we do not model.
    Opaque,
    Mark,
}

#[derive(Debug)]
enum Obj {
    Dict(Vec<(Val, Val)>),
    List(Vec<Val>),
    Tuple(Vec<Val>),
}

#[derive(Debug)]
struct StorageRef {
    dtype: DType,
    key: String,
}

#[derive(Debug)]
struct TensorRef {
    storage: usize,
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
}

#[derive(Debug, Default)]
struct Vm {
    stack: Vec<Val>,
    memo: std::collections::HashMap<u64, Val>,
    objs: Vec<Obj>,
    storages: Vec<StorageRef>,
    tensors: Vec<TensorRef>,
}

type VmResult<T> = std::result::Result<T, (usize, String)>;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> VmResult<&'a [u8]> {
        let end = self.i.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
            Some(e) => {
                let s = &self.b[self.i..e];
                self.i = e;
                Ok(s)
            }
            None => Err((self.i, format!("truncated pickle: needs {n} more bytes"))),
        }
    }
    fn u8(&mut self) -> VmResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> VmResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn line(&mut self) -> VmResult<&'a str> {
        let rest = &self.b[self.i..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or((self.i, "unterminated text line".to_string()))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| (self.i, "text line is not UTF-8".to_string()))?;
        self.i += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: u64) -> VmResult<String> {
        let at = self.i;
        let n = usize::try_from(n).map_err(|_| (at, "string length too large".to_string()))?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| (at, "string is not UTF-8".to_string()))
    }
}

fn storage_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

impl Vm {
    fn pop(&mut self, at: usize) -> VmResult<Val> {
        self.stack.pop().ok_or((at, "pickle stack underflow".to_string()))
    }

    /// Pops everything above the topmost MARK (and the mark).
    fn pop_mark(&mut self, at: usize) -> VmResult<Vec<Val>> {
        let pos = self
            .stack
            .iter()
            .rposition(|v| *v == Val::Mark)
            .ok_or((at, "no MARK on the pickle stack".to_string()))?;
        let items = self.stack.split_off(pos + 1);
        self.stack.pop();
        Ok(items)
    }

    fn new_obj(&mut self, o: Obj) -> Val {
        self.objs.push(o);
        Val::Obj(self.objs.len() - 1)
    }

    fn tuple_items(&self, v: &Val) -> Option<&[Val]> {
        match v {
            Val::Obj(id) => match self.objs.get(*id) {
                Some(Obj::Tuple(items)) | Some(Obj::List(items)) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    fn ints(&self, v: &Val) -> Option<Vec<u64>> {
        self.tuple_items(v)?
            .iter()
            .map(|x| match x {
                Val::Int(i) => u64::try_from(*i).ok(),
                _ => None,
            })
            .collect()
    }

    fn memo_put(&mut self, key: u64, at: usize) -> VmResult<()> {
        let top = self.stack.last().cloned().ok_or((at, "memoize on empty stack".to_string()))?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64, at: usize) -> VmResult<()> {
        let v = self.memo.get(&key).cloned().ok_or((at, format!("memo key {key} was never stored")))?;
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&mut self, target: &Val, pairs: Vec<(Val, Val)>, at: usize) -> VmResult<()> {
        match target {
            Val::Obj(id) => match self.objs.get_mut(*id) {
                Some(Obj::Dict(items)) => {
                    for (k, v) in pairs {
                        // A later SETITEM of the same key replaces the earlier one, as in Python.
                        if let Some(slot) = items.iter_mut().find(|(ek, _)| *ek == k) {
                            slot.1 = v;
                        } else {
                            items.push((k, v));
                        }
                    }
                    Ok(())
                }
                _ => Err((at, "SETITEM on something that is not a dict".into())),
            },
            // Items set on an opaque object (e.g. a custom dict subclass) are ignored.
            Val::Opaque => Ok(()),
            _ => Err((at, "SETITEM on something that is not a dict".into())),
        }
    }

    fn append(&mut self, target: &Val, vals: Vec<Val>, at: usize) -> VmResult<()> {
        match target {
            Val::Obj(id) => match self.objs.get_mut(*id) {
                Some(Obj::List(items)) => {
                    items.extend(vals);
                    Ok(())
                }
                _ => Err((at, "APPEND on something that is not a list".into())),
            },
            Val::Opaque => Ok(()),
            _ => Err((at, "APPEND on something that is not a list".into())),
        }
    }

    /// `callable(*args)` for the few callables torch pickles.
    fn call(&mut self, func: Val, args: Val, at: usize) -> VmResult<Val> {
        let Val::Global(module, name) = func else {
            return Ok(Val::Opaque);
        };
        let items: Vec<Val> = self.tuple_items(&args).map(|s| s.to_vec()).unwrap_or_default();
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let (Some(Val::Storage(s)), Some(Val::Int(off)), Some(size), Some(stride)) =
                    (items.first(), items.get(1), items.get(2), items.get(3))
                else {
                    return Err((at, format!("{name} called with unexpected arguments")));
                };
                let size = self.ints(size).ok_or((at, "tensor size is not a tuple of integers".to_string()))?;
                let stride = self.ints(stride).ok_or((at, "tensor stride is not a tuple of integers".to_string()))?;
                if size.len() != stride.len() {
                    return Err((at, "tensor size and stride differ in length".into()));
                }
                let offset = u64::try_from(*off).map_err(|_| (at, "negative storage offset".to_string()))?;
                self.tensors.push(TensorRef { storage: *s, offset, size, stride });
                Ok(Val::Tensor(self.tensors.len() - 1))
            }
            ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
                Ok(items.first().cloned().unwrap_or(Val::Opaque))
            }
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                let d = self.new_obj(Obj::Dict(Vec::new()));
                // OrderedDict([(k, v), ...]) form.
                if let Some(pairs) = items.first().and_then(|p| self.tuple_items(p)).map(|s| s.to_vec()) {
                    let mut kv = Vec::new();
                    for p in pairs {
                        if let Some([k, v]) = self.tuple_items(&p).and_then(|s| <&[Val; 2]>::try_from(s).ok()) {
                            kv.push((k.clone(), v.clone()));
                        }
                    }
                    self.set_items(&d, kv, at)?;
                }
                Ok(d)
            }
            _ => Ok(Val::Opaque),
        }
    }

    fn persistent_load(&mut self, pid: Val, at: usize) -> VmResult<Val> {
        let items = self.tuple_items(&pid).map(|s| s.to_vec()).unwrap_or_default();
        match items.as_slice() {
            [Val::Str(tag), Val::Global(_, cls), Val::Str(key), ..] if tag == "storage" => {
                let dtype = storage_dtype(cls).ok_or((at, format!("unsupported storage type torch.{cls}")))?;
                self.storages.push(StorageRef { dtype, key: key.clone() });
                Ok(Val::Storage(self.storages.len() - 1))
            }
            _ => Err((at, "unsupported persistent id (expected ('storage', type, key, location, numel))".into())),
        }
    }

    /// Runs the pickle and returns the value left by STOP.
    fn run(&mut self, data: &[u8]) -> VmResult<Val> {
        let mut c = Cursor { b: data, i: 0 };
        loop {
            let at = c.i;
            let op = c.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let v = c.u8()?;
                    if v > 5 {
                        return Err((at, format!("unsupported pickle protocol {v}")));
                    }
                }
                0x95 => {
                    // FRAME: the length is advisory for us.
                    c.take(8)?;
                }
                b'.' => return self.pop(at),
                b'}' => {
                    let d = self.new_obj(Obj::Dict(Vec::new()));
                    self.stack.push(d);
                }
                b']' => {
                    let l = self.new_obj(Obj::List(Vec::new()));
                    self.stack.push(l);
                }
                b')' => {
                    let t = self.new_obj(Obj::Tuple(Vec::new()));
                    self.stack.push(t);
                }
                b'(' => self.stack.push(Val::Mark),
                b'X' => {
                    let n = u32::from_le_bytes(c.le::<4>()?);
                    let s = c.utf8(u64::from(n))?;
                    self.stack.push(Val::Str(s));
                }
                0x8c => {
                    let n = c.u8()?;
                    let s = c.utf8(u64::from(n))?;
                    self.stack.push(Val::Str(s));
                }
                0x8d => {
                    let n = u64::from_le_bytes(c.le::<8>()?);
                    let s = c.utf8(n)?;
                    self.stack.push(Val::Str(s));
                }
                b'C' => {
                    let n = c.u8()?;
                    c.take(usize::from(n))?;
                    self.stack.push(Val::Bytes);
                }
                b'B' => {
                    let n = u32::from_le_bytes(c.le::<4>()?);
                    c.take(n as usize)?;
                    self.stack.push(Val::Bytes);
                }
                0x8e => {
                    let n = u64::from_le_bytes(c.le::<8>()?);
                    let n = usize::try_from(n).map_err(|_| (at, "bytes length too large".to_string()))?;
                    c.take(n)?;
                    self.stack.push(Val::Bytes);
                }
                b'J' => {
                    let v = i32::from_le_bytes(c.le::<4>()?);
                    self.stack.push(Val::Int(i64::from(v)));
                }
                b'K' => {
                    let v = c.u8()?;
                    self.stack.push(Val::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(c.le::<2>()?);
                    self.stack.push(Val::Int(i64::from(v)));
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = usize::from(c.u8()?);
                    let b = c.take(n)?;
                    if n > 8 {
                        return Err((at, "integer wider than 64 bits".into()));
                    }
                    let mut v: i64 = 0;
                    for (k, &byte) in b.iter().enumerate() {
                        v |= i64::from(byte) << (8 * k);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Val::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(c.le::<8>()?);
                    self.stack.push(Val::Float(v));
                }
                0x88 => self.stack.push(Val::Bool(true)),
                0x89 => self.stack.push(Val::Bool(false)),
                b'N' => self.stack.push(Val::None),
                b't' => {
                    let items = self.pop_mark(at)?;
                    let t = self.new_obj(Obj::Tuple(items));
                    self.stack.push(t);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err((at, "pickle stack underflow".into()));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    if items.contains(&Val::Mark) {
                        return Err((at, "MARK inside TUPLE{n}".into()));
                    }
                    let t = self.new_obj(Obj::Tuple(items));
                    self.stack.push(t);
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    let l = self.new_obj(Obj::List(items));
                    self.stack.push(l);
                }
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let pairs = pairs(items, at)?;
                    let d = self.new_obj(Obj::Dict(Vec::new()));
                    self.set_items(&d, pairs, at)?;
                    self.stack.push(d);
                }
                b'c' => {
                    let module = c.line()?.to_string();
                    let name = c.line()?.to_string();
                    self.stack.push(Val::Global(module, name));
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    match (module, name) {
                        (Val::Str(m), Val::Str(n)) => self.stack.push(Val::Global(m, n)),
                        _ => return Err((at, "STACK_GLOBAL needs two strings".into())),
                    }
                }
                b'R' => {
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let v = self.call(func, args, at)?;
                    self.stack.push(v);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop(at)?;
                    let cls = self.pop(at)?;
                    let v = self.call(cls, args, at)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: object state (e.g. state_dict._metadata) is not needed.
                    self.pop(at)?;
                    if self.stack.is_empty() {
                        return Err((at, "BUILD on empty stack".into()));
                    }
                }
                b'Q' => {
                    let pid = self.pop(at)?;
                    let v = self.persistent_load(pid, at)?;
                    self.stack.push(v);
                }
                b'q' => {
                    let k = c.u8()?;
                    self.memo_put(u64::from(k), at)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(c.le::<4>()?);
                    self.memo_put(u64::from(k), at)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k, at)?;
                }
                b'h' => {
                    let k = c.u8()?;
                    self.memo_get(u64::from(k), at)?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(c.le::<4>()?);
                    self.memo_get(u64::from(k), at)?;
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let d = self.stack.last().cloned().ok_or((at, "SETITEM without a dict".to_string()))?;
                    self.set_items(&d, vec![(k, v)], at)?;
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    let pairs = pairs(items, at)?;
                    let d = self.stack.last().cloned().ok_or((at, "SETITEMS without a dict".to_string()))?;
                    self.set_items(&d, pairs, at)?;
                }
                b'a' => {
                    let v = self.pop(at)?;
                    let l = self.stack.last().cloned().ok_or((at, "APPEND without a list".to_string()))?;
                    self.append(&l, vec![v], at)?;
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    let l = self.stack.last().cloned().ok_or((at, "APPENDS without a list".to_string()))?;
                    self.append(&l, items, at)?;
                }
                b'0' => {
                    self.pop(at)?;
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let top = self.stack.last().cloned().ok_or((at, "DUP on empty stack".to_string()))?;
                    self.stack.push(top);
                }
                other => return Err((at, format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }
}

fn pairs(items: Vec<Val>, at: usize) -> VmResult<Vec<(Val, Val)>> {
    if !items.len().is_multiple_of(2) {
        return Err((at, "odd number of items for a dict".into()));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rejects_garbage_without_panicking() {
        for bytes in [&b""[..], b"\x80", b"\x80\x02}q", b"\x80\x02(u.", b"\x80\x02X\xff\xff\xff\xff", b"\x80\x02h\x05.", b"\x80\x02\xff"] {
            let mut vm = Vm::default();
            assert!(vm.run(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn vm_builds_dicts_and_long1() {
        // {'a': -2, 'b': [1]}
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a\x8a\x01\xfeX\x01\x00\x00\x00b]q\x01K\x01au.";
        let mut vm = Vm::default();
        let root = vm.run(p);
        assert!(matches!(root, Ok(Val::Obj(0))), "{root:?}");
        match vm.objs.first() {
            Some(Obj::Dict(items)) => {
                assert_eq!(items[0], (Val::Str("a".into()), Val::Int(-2)));
                assert_eq!(items.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }
}
