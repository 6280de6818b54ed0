//! `dlv desc`: one version described as text, JSON or a self-contained HTML report; and what
//! `dlv diff` shares with it (output formats, streaming weight readers, text tables).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dlv_graph::{Footprint, Net, NodeId, Phase, ShapeInfo};
use dlv_store::{short, DType, Precision, Repository, TensorEntry, VersionRecord};
use serde::Serialize;
use serde_json::json;
use trainer_candle::{forward_sample, ForwardSample};

use crate::output::{bytes, time};
use crate::{html, Cli, DescArgs};

// ---------------------------------------------------------------------------------------------
// Output format

/// Where a report goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    /// One self-contained HTML file (`-` for standard output).
    Html(PathBuf),
}

/// Reads `--output FORMAT [FILE]`, `--output html=FILE` and `--out FILE`. `--json` wins over
/// text. A second `--output` value after `text` or `json` is not a file: it is handed back as
/// a ref that clap took for the option's.
pub fn parse_format(values: &[String], out: Option<&Path>, json: bool) -> Result<(Format, Option<String>)> {
    let first = values.first().map(String::as_str).unwrap_or("text");
    let (name, inline) = match first.split_once('=') {
        Some((n, f)) => (n, Some(f.to_string())),
        None => (first, None),
    };
    let second = values.get(1).cloned();
    let format = match name {
        "text" | "json" => {
            if let Some(f) = inline {
                bail!("output format '{name}' takes no file ('{f}'); only html writes a file")
            }
            if json || name == "json" {
                Format::Json
            } else {
                Format::Text
            }
        }
        "html" => {
            let file = inline.or_else(|| out.map(|p| p.display().to_string()));
            let (file, extra) = match (file, second) {
                (Some(f), extra) => (f, extra),
                (None, Some(f)) => (f, None),
                (None, None) => bail!("html output needs a file: --output html FILE (or --output html=FILE, - for stdout)"),
            };
            if file.is_empty() {
                bail!("html output needs a file name");
            }
            return Ok((Format::Html(PathBuf::from(file)), extra));
        }
        other => bail!("unknown output format '{other}' (expected text, json or html FILE)"),
    };
    Ok((format, second))
}

/// Writes an HTML document to its file (atomically) or to `out` for `-`.
pub fn write_html(path: &Path, doc: &str, out: &mut dyn Write) -> Result<()> {
    if path == Path::new("-") {
        out.write_all(doc.as_bytes())?;
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "report.html".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, doc).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Streaming tensor values

/// Turns the little-endian bytes of a tensor into numbers, whatever the chunking of the writes.
/// The callback returns false to stop (the write then fails).
pub struct Values<F: FnMut(f64) -> bool> {
    dtype: DType,
    carry: Vec<u8>,
    f: F,
}

impl<F: FnMut(f64) -> bool> Values<F> {
    pub fn new(dtype: DType, f: F) -> Values<F> {
        Values { dtype, carry: Vec::with_capacity(8), f }
    }

    fn emit(&mut self, b: &[u8]) -> bool {
        let v = decode(self.dtype, b);
        (self.f)(v)
    }
}

fn decode(dtype: DType, b: &[u8]) -> f64 {
    let mut a8 = [0u8; 8];
    a8[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    let a4 = [a8[0], a8[1], a8[2], a8[3]];
    let a2 = [a8[0], a8[1]];
    match dtype {
        DType::F64 => f64::from_le_bytes(a8),
        DType::F32 => f32::from_le_bytes(a4) as f64,
        DType::F16 => half::f16::from_le_bytes(a2).to_f64(),
        DType::BF16 => half::bf16::from_le_bytes(a2).to_f64(),
        DType::I64 => i64::from_le_bytes(a8) as f64,
        DType::I32 => i32::from_le_bytes(a4) as f64,
        DType::I16 => i16::from_le_bytes(a2) as f64,
        DType::I8 => a8[0] as i8 as f64,
        DType::U8 | DType::Bool => a8[0] as f64,
    }
}

impl<F: FnMut(f64) -> bool> Write for Values<F> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        let w = self.dtype.size();
        let stop = || io::Error::other("reader stopped");
        if !self.carry.is_empty() {
            let need = (w - self.carry.len()).min(buf.len());
            self.carry.extend_from_slice(&buf[..need]);
            buf = &buf[need..];
            if self.carry.len() == w {
                let c = std::mem::take(&mut self.carry);
                if !self.emit(&c) {
                    return Err(stop());
                }
            }
        }
        let mut chunks = buf.chunks_exact(w);
        for c in &mut chunks {
            if !self.emit(c) {
                return Err(stop());
            }
        }
        self.carry.extend_from_slice(chunks.remainder());
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn dtype_of(t: &TensorEntry) -> Result<DType> {
    DType::parse(&t.dtype).with_context(|| format!("tensor {} has an unknown dtype {}", t.name, t.dtype))
}

/// Streams every value of a tensor from the store into `f`.
pub fn for_each_value(repo: &Repository, t: &TensorEntry, mut f: impl FnMut(f64)) -> Result<()> {
    let dtype = dtype_of(t)?;
    let mut sink = Values::new(dtype, |v| {
        f(v);
        true
    });
    repo.read_tensor(t, Precision::Full, &mut sink)
        .with_context(|| format!("cannot read tensor {}", t.name))?;
    Ok(())
}

/// Summary statistics of one tensor, computed in one streaming pass (Welford for the variance).
#[derive(Debug, Clone, Serialize)]
pub struct WeightStats {
    pub tensor: String,
    pub layer: Option<String>,
    pub blob: Option<String>,
    pub dtype: String,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
    /// Fraction of values equal to zero.
    pub zeros: f64,
    /// NaN and infinite values (left out of the other figures).
    pub nonfinite: u64,
}

pub fn weight_stats(repo: &Repository, t: &TensorEntry) -> Result<WeightStats> {
    let (mut n, mut mean, mut m2) = (0u64, 0f64, 0f64);
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut zeros, mut nonfinite, mut total) = (0u64, 0u64, 0u64);
    for_each_value(repo, t, |v| {
        total += 1;
        if !v.is_finite() {
            nonfinite += 1;
            return;
        }
        if v == 0.0 {
            zeros += 1;
        }
        n += 1;
        let d = v - mean;
        mean += d / n as f64;
        m2 += d * (v - mean);
        min = min.min(v);
        max = max.max(v);
    })?;
    let finite = n > 0;
    Ok(WeightStats {
        tensor: t.name.clone(),
        layer: t.layer.clone(),
        blob: t.blob.clone(),
        dtype: t.dtype.clone(),
        count: total,
        min: if finite { min } else { 0.0 },
        max: if finite { max } else { 0.0 },
        mean,
        std: if finite { (m2 / n as f64).sqrt() } else { 0.0 },
        zeros: if total > 0 { zeros as f64 / total as f64 } else { 0.0 },
        nonfinite,
    })
}

/// A histogram of a tensor's finite values over `[min, max]` (a second streaming pass).
pub fn histogram(repo: &Repository, t: &TensorEntry, min: f64, max: f64, bins: usize) -> Result<Vec<u64>> {
    let mut h = vec![0u64; bins.max(1)];
    let width = (max - min) / h.len() as f64;
    let last = h.len() - 1;
    for_each_value(repo, t, |v| {
        if !v.is_finite() {
            return;
        }
        let k = if width > 0.0 { (((v - min) / width) as usize).min(last) } else { 0 };
        h[k] += 1;
    })?;
    Ok(h)
}

/// Reads a whole tensor as f32 when it has at most `limit` values (for filter images).
pub fn read_small(repo: &Repository, t: &TensorEntry, limit: u64) -> Result<Option<Vec<f32>>> {
    let n: u64 = t.shape.iter().product();
    if n > limit {
        return Ok(None);
    }
    let mut v = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for_each_value(repo, t, |x| v.push(x as f32))?;
    Ok(Some(v))
}

// ---------------------------------------------------------------------------------------------
// Formatting helpers

/// Columns of text, left-aligned, two spaces apart, no trailing spaces.
pub struct Table {
    rows: Vec<Vec<String>>,
    indent: usize,
}

impl Table {
    pub fn new(indent: usize) -> Table {
        Table { rows: Vec::new(), indent }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut width = vec![0usize; cols];
        for r in &self.rows {
            for (k, c) in r.iter().enumerate() {
                width[k] = width[k].max(c.chars().count());
            }
        }
        for r in &self.rows {
            let mut line = " ".repeat(self.indent);
            for (k, c) in r.iter().enumerate() {
                line.push_str(c);
                if k + 1 < r.len() {
                    line.push_str(&" ".repeat(width[k] - c.chars().count() + 2));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A number rounded to four significant digits, written in its shortest form (`0.01`,
/// `-0.007774`, `1235`), in exponent form when very small or large (`1e-7`).
pub fn sig(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if !x.is_finite() {
        return x.to_string();
    }
    let rounded: f64 = format!("{x:.3e}").parse().unwrap_or(x);
    let mag = rounded.abs().log10().floor() as i32;
    if !(-4..6).contains(&mag) {
        return format!("{rounded:e}");
    }
    format!("{rounded}")
}

/// A count with an SI suffix (`4.6M`).
pub fn si(n: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        n.to_string()
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

pub fn shape_str<T: std::fmt::Display>(s: &[T]) -> String {
    if s.is_empty() {
        return "scalar".into();
    }
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

pub fn outputs_str(o: &[Option<Vec<usize>>]) -> String {
    if o.is_empty() {
        return "-".into();
    }
    o.iter().map(|s| s.as_deref().map(shape_str).unwrap_or_else(|| "?".into())).collect::<Vec<_>>().join(", ")
}

pub fn phase_str(p: Option<Phase>) -> Option<&'static str> {
    p.map(|p| match p {
        Phase::Train => "TRAIN",
        Phase::Test => "TEST",
    })
}

/// The attributes worth showing for a layer: the scalars of its `*_param` messages (fillers
/// left out), as `(path, value)`; repeated values joined with commas.
pub fn key_attributes(node: &dlv_graph::Node) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, value) in &node.params.fields {
        if !key.ends_with("_param") {
            continue;
        }
        let Some(m) = value.as_msg() else { continue };
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        collect(m, "", &mut grouped, 0);
        for (k, v) in grouped {
            out.push((k, v.join(",")));
        }
    }
    out
}

fn collect(m: &dlv_graph::Message, prefix: &str, out: &mut Vec<(String, Vec<String>)>, depth: usize) {
    for (k, v) in &m.fields {
        if k.ends_with("_filler") {
            continue;
        }
        let path = format!("{prefix}{k}");
        match v {
            dlv_graph::Value::Msg(sub) if depth < 8 => collect(sub, &format!("{path}."), out, depth + 1),
            dlv_graph::Value::Msg(_) => {}
            s => {
                let text = dlv_graph::textformat::scalar_text(s);
                match out.iter_mut().find(|(p, _)| *p == path) {
                    Some((_, vals)) => vals.push(text),
                    None => out.push((path, vec![text])),
                }
            }
        }
    }
}

pub fn attrs_str(a: &[(String, String)]) -> String {
    a.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

fn as_map<S: serde::Serializer>(v: &[(String, String)], s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, x) in v {
        m.serialize_entry(k, x)?;
    }
    m.end()
}

// ---------------------------------------------------------------------------------------------
// The description of one version

/// A version with its network, shapes and footprint, loaded once for every output.
pub struct Loaded {
    pub id: String,
    pub record: VersionRecord,
    pub net: Option<Net>,
    pub shapes: ShapeInfo,
    pub footprint: Option<Footprint>,
    pub order: Vec<NodeId>,
}

impl Loaded {
    pub fn load(repo: &Repository, rev: &str) -> Result<Loaded> {
        let id = repo.resolve(rev)?;
        let record = repo.get(&id)?;
        let net = repo.network(&record)?;
        let (shapes, footprint, order) = match &net {
            Some(n) => {
                let s = n.infer_shapes();
                let f = n.footprint(&s);
                let order = n.topo_order().unwrap_or_else(|_| n.node_ids().to_vec());
                (s, Some(f), order)
            }
            None => (ShapeInfo::default(), None, Vec::new()),
        };
        Ok(Loaded { id, record, net, shapes, footprint, order })
    }

    pub fn label(&self) -> String {
        format!("{}@{}", self.record.name, short(&self.id))
    }

    /// Tensors of a layer, by layer name.
    pub fn tensors_of<'a>(&'a self, layer: &'a str) -> impl Iterator<Item = &'a TensorEntry> + 'a {
        self.record.tensors.iter().filter(move |t| t.layer.as_deref() == Some(layer))
    }

    pub fn layers(&self) -> Vec<LayerRow> {
        let Some(net) = &self.net else { return Vec::new() };
        let fp: BTreeMap<usize, &dlv_graph::LayerFootprint> = self
            .footprint
            .iter()
            .flat_map(|f| f.layers.iter())
            .map(|l| (l.id.index(), l))
            .collect();
        self.order
            .iter()
            .filter_map(|&id| {
                let node = net.node(id)?;
                let ns = self.shapes.node(id);
                let blobs: Vec<BlobRow> = match self.shapes.blobs(id) {
                    Some(b) if !b.is_empty() => b.to_vec(),
                    _ => node.blobs.clone(),
                }
                .into_iter()
                .map(|b| BlobRow { count: b.shape.iter().map(|&d| d as u64).product(), name: b.name, shape: b.shape })
                .collect();
                let f = fp.get(&id.index());
                Some(LayerRow {
                    name: node.name.clone(),
                    layer_type: node.layer_type.clone(),
                    phase: phase_str(node.phase),
                    bottoms: node.bottoms.clone(),
                    tops: node.tops.clone(),
                    attributes: key_attributes(node),
                    outputs: ns.map(|n| n.outputs.clone()).unwrap_or_default(),
                    params: f.map(|f| f.params).unwrap_or(0),
                    flops: f.and_then(|f| f.flops),
                    blobs,
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BlobRow {
    pub name: String,
    pub shape: Vec<usize>,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub name: String,
    #[serde(rename = "type")]
    pub layer_type: String,
    pub phase: Option<&'static str>,
    pub bottoms: Vec<String>,
    pub tops: Vec<String>,
    #[serde(serialize_with = "as_map")]
    pub attributes: Vec<(String, String)>,
    /// Output shapes, one per top; null where unknown.
    pub outputs: Vec<Option<Vec<usize>>>,
    pub blobs: Vec<BlobRow>,
    pub params: u64,
    pub flops: Option<u64>,
}

/// Execution footprint as reported (JSON field names are stable).
#[derive(Debug, Clone, Serialize)]
pub struct FootprintReport {
    pub parameters: u64,
    pub parameter_bytes: u64,
    pub batch: Option<usize>,
    pub activations: u64,
    pub activation_bytes: u64,
    pub memory_bytes: u64,
    pub flops: u64,
    pub flops_complete: bool,
    /// Measured forward time per batch on the CPU; null when not measured (`forward_note` says why).
    pub forward_ms_per_batch: Option<f64>,
    pub forward_note: String,
}

/// A timed forward pass of the version (trainer-candle), or why there is none.
pub type ForwardResult = std::result::Result<ForwardSample, String>;

/// Note of a measured forward time (deterministic, so that snapshots only redact the number).
pub fn measured_note(f: &ForwardSample) -> String {
    format!("measured on the CPU: TEST phase, batch {}, pseudo-random input, mean of timed passes after a warm-up", f.batch)
}

/// Runs the version's network once on a pseudo-random input (batch of the footprint) and times
/// it; the error is the reason, worded for "not measured: REASON".
pub fn measure_forward(repo: &Repository, l: &Loaded) -> ForwardResult {
    let Some(net) = &l.net else { return Err("the version has no network".into()) };
    let batch = l.footprint.as_ref().and_then(|f| f.batch).unwrap_or(1);
    forward_sample(repo, &l.record, net, None, batch).map_err(|e| e.to_string())
}

/// The footprint without a forward measurement (`dlv diff`).
pub fn footprint_report(l: &Loaded) -> Option<FootprintReport> {
    footprint_with(l, None)
}

/// `forward`: the measurement, if one was tried.
pub fn footprint_with(l: &Loaded, forward: Option<&ForwardResult>) -> Option<FootprintReport> {
    let fp = l.footprint.as_ref()?;
    let params = if l.record.tensors.is_empty() { fp.params } else { l.record.param_count() };
    let param_bytes = if l.record.tensors.is_empty() {
        fp.params.saturating_mul(dlv_graph::VALUE_BYTES)
    } else {
        l.record.weight_bytes()
    };
    let activation_bytes = fp.activations.saturating_mul(dlv_graph::VALUE_BYTES);
    let (forward_ms_per_batch, forward_note) = match forward {
        Some(Ok(f)) => (Some(f.seconds_per_batch * 1000.0), measured_note(f)),
        Some(Err(why)) => (None, format!("not measured: {why}")),
        None => (None, "not measured by dlv diff (dlv desc measures it)".to_string()),
    };
    Some(FootprintReport {
        parameters: params,
        parameter_bytes: param_bytes,
        batch: fp.batch,
        activations: fp.activations,
        activation_bytes,
        memory_bytes: activation_bytes.saturating_add(param_bytes),
        flops: fp.flops,
        flops_complete: fp.flops_complete,
        forward_ms_per_batch,
        forward_note,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricSummary {
    pub name: String,
    pub points: usize,
    pub first_iter: Option<u64>,
    pub first: Option<f64>,
    pub last_iter: Option<u64>,
    pub last: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

pub fn metric_summaries(r: &VersionRecord) -> Vec<MetricSummary> {
    r.series
        .iter()
        .map(|s| {
            let finite = s.values.iter().copied().filter(|v| v.is_finite());
            let min = finite.clone().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
            let max = finite.fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            MetricSummary {
                name: s.name.clone(),
                points: s.values.len(),
                first_iter: s.iters.first().copied(),
                first: s.values.first().copied(),
                last_iter: s.iters.last().copied(),
                last: s.values.last().copied(),
                min,
                max,
            }
        })
        .collect()
}

pub fn run(cli: &Cli, start: &Path, args: &DescArgs, out: &mut dyn Write) -> Result<()> {
    let (format, extra) = parse_format(&args.output, args.out.as_deref(), cli.json)?;
    let mut refs: Vec<String> = args.rev.iter().cloned().collect();
    refs.extend(extra);
    let rev = match refs.as_slice() {
        [one] => one.clone(),
        [] => bail!("which version? give a ref: dlv desc REF"),
        more => bail!("dlv desc takes one version, got {} ({}); use dlv diff to compare", more.len(), more.join(", ")),
    };
    let repo = Repository::open(start)?;
    let l = Loaded::load(&repo, &rev)?;
    let stats: Vec<WeightStats> = l.record.tensors.iter().map(|t| weight_stats(&repo, t)).collect::<Result<_>>()?;
    if let (Some(name), Some(net)) = (&args.layer, &l.net) {
        if !net.nodes().any(|n| &n.name == name) {
            bail!("--layer {name}: the network of {} has no layer of that name", l.label());
        }
    }
    let forward: ForwardResult =
        if args.no_forward { Err("skipped (--no-forward)".into()) } else { measure_forward(&repo, &l) };
    match format {
        Format::Json => {
            let v = desc_json(&repo, &l, &stats, &forward)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        Format::Text => desc_text(&repo, &l, &stats, &forward, out)?,
        Format::Html(path) => {
            let doc = html::desc_page(&repo, &l, &stats, &forward, args.layer.as_deref())?;
            write_html(&path, &doc, out)?;
            if !cli.quiet && path != Path::new("-") {
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// The record's own fields (as `dlv desc --json` always gave them) plus the derived ones.
fn desc_json(repo: &Repository, l: &Loaded, stats: &[WeightStats], forward: &ForwardResult) -> Result<serde_json::Value> {
    let r = &l.record;
    let mut v = serde_json::to_value(r)?;
    let children = repo.children_of(&l.id)?;
    let parents: Vec<serde_json::Value> = r
        .parents
        .iter()
        .map(|p| json!({ "id": p, "name": repo.get(p).ok().map(|pr| pr.name) }))
        .collect();
    if let Some(obj) = v.as_object_mut() {
        if let Some(serde_json::Value::Array(ts)) = obj.get_mut("tensors") {
            for (t, e) in ts.iter_mut().zip(&r.tensors) {
                if let Some(t) = t.as_object_mut() {
                    t.insert("count".into(), json!(e.shape.iter().product::<u64>()));
                }
            }
        }
        obj.insert("id".into(), json!(l.id));
        obj.insert("short".into(), json!(short(&l.id)));
        obj.insert("parent_versions".into(), json!(parents));
        obj.insert("children".into(), json!(children));
        obj.insert("created".into(), json!(time(r.created_ms)));
        obj.insert("parameters".into(), json!(r.param_count()));
        obj.insert("weight_bytes".into(), json!(r.weight_bytes()));
        obj.insert("layers".into(), serde_json::to_value(l.layers())?);
        obj.insert("footprint".into(), serde_json::to_value(footprint_with(l, Some(forward)))?);
        obj.insert("metrics".into(), serde_json::to_value(metric_summaries(r))?);
        obj.insert("weight_stats".into(), serde_json::to_value(stats)?);
    }
    Ok(v)
}

fn desc_text(repo: &Repository, l: &Loaded, stats: &[WeightStats], forward: &ForwardResult, out: &mut dyn Write) -> Result<()> {
    let r = &l.record;
    writeln!(out, "version  {}", l.label())?;
    writeln!(out, "id       {}", l.id)?;
    for p in &r.parents {
        let name = repo.get(p).map(|pr| pr.name).unwrap_or_else(|_| "?".into());
        writeln!(out, "parent   {name}@{}", short(p))?;
    }
    writeln!(out, "author   {}", r.author)?;
    writeln!(out, "created  {}", time(r.created_ms))?;
    writeln!(out, "message  {}", r.message)?;

    if let (Some(n), Some(net)) = (&r.network, &l.net) {
        writeln!(out, "\nnetwork  {} ({} layers, topological order)", n.name, net.len())?;
        let mut t = Table::new(2);
        t.row(["layer", "type", "output", "params", "attributes"]);
        for row in l.layers() {
            let name = match row.phase {
                Some(p) => format!("{} ({p})", row.name),
                None => row.name.clone(),
            };
            let params = if row.params > 0 { row.params.to_string() } else { "-".into() };
            t.row([name, row.layer_type.clone(), outputs_str(&row.outputs), params, attrs_str(&row.attributes)]);
        }
        t.write(out)?;
    }

    if !r.tensors.is_empty() {
        writeln!(
            out,
            "\nparameters  {} tensor(s), {} value(s), {}",
            r.tensors.len(),
            r.param_count(),
            bytes(r.weight_bytes())
        )?;
        let mut t = Table::new(2);
        t.row(["tensor", "layer", "dtype", "shape", "count", "bytes"]);
        for e in &r.tensors {
            t.row([
                e.name.clone(),
                e.layer.clone().unwrap_or_else(|| "-".into()),
                e.dtype.clone(),
                shape_str(&e.shape),
                e.shape.iter().product::<u64>().to_string(),
                bytes(e.bytes),
            ]);
        }
        t.write(out)?;
    }

    if let Some(f) = footprint_with(l, Some(forward)) {
        let batch = f.batch.map(|b| b.to_string()).unwrap_or_else(|| "?".into());
        writeln!(out, "\nfootprint (batch {batch}, fp32)")?;
        let mut t = Table::new(2);
        t.row(["parameters".to_string(), format!("{} ({})", f.parameters, bytes(f.parameter_bytes))]);
        t.row([
            "memory per batch".to_string(),
            format!("{} (activations {}, parameters {})", bytes(f.memory_bytes), bytes(f.activation_bytes), bytes(f.parameter_bytes)),
        ]);
        let bound = if f.flops_complete { "" } else { " (at least: some layers unknown)" };
        t.row(["FLOPs per batch".to_string(), format!("{} ({}){bound}", si(f.flops), f.flops)]);
        let ft = match f.forward_ms_per_batch {
            Some(ms) => format!("{} ms per batch ({})", sig(ms), f.forward_note),
            None => f.forward_note.clone(),
        };
        t.row(["forward time".to_string(), ft]);
        t.write(out)?;
    }

    if !r.hyper.is_empty() {
        writeln!(out, "\nhyper-parameters")?;
        let mut t = Table::new(2);
        for h in &r.hyper {
            t.row([h.key.clone(), h.text.clone()]);
        }
        t.write(out)?;
    }

    let metrics = metric_summaries(r);
    if !metrics.is_empty() {
        writeln!(out, "\nmetrics")?;
        let mut t = Table::new(2);
        t.row(["series", "points", "first", "last", "min", "max"]);
        let at = |i: Option<u64>, v: Option<f64>| match (i, v) {
            (Some(i), Some(v)) => format!("{} @{i}", sig(v)),
            _ => "-".into(),
        };
        for m in &metrics {
            t.row([
                m.name.clone(),
                m.points.to_string(),
                at(m.first_iter, m.first),
                at(m.last_iter, m.last),
                m.min.map(sig).unwrap_or_else(|| "-".into()),
                m.max.map(sig).unwrap_or_else(|| "-".into()),
            ]);
        }
        t.write(out)?;
    }

    if !stats.is_empty() {
        writeln!(out, "\nweight statistics")?;
        let mut t = Table::new(2);
        t.row(["tensor", "min", "max", "mean", "std", "zeros"]);
        for s in stats {
            t.row([s.tensor.clone(), sig(s.min), sig(s.max), sig(s.mean), sig(s.std), format!("{:.2}%", s.zeros * 100.0)]);
        }
        t.write(out)?;
    }

    if !r.files.is_empty() {
        writeln!(out, "\nfiles")?;
        let mut t = Table::new(2);
        for f in &r.files {
            t.row([f.role.clone(), f.path.clone(), bytes(f.size)]);
        }
        t.write(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_across_write_boundaries() {
        let data: Vec<u8> = [1.5f32, -2.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut got = Vec::new();
        {
            let mut sink = Values::new(DType::F32, |v| {
                got.push(v);
                true
            });
            for chunk in data.chunks(3) {
                assert!(sink.write_all(chunk).is_ok());
            }
        }
        assert_eq!(got, [1.5, -2.0, 0.25]);
    }

    #[test]
    fn formats_parse() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(matches!(parse_format(&[], None, false), Ok((Format::Text, None))));
        assert!(matches!(parse_format(&s(&["text"]), None, true), Ok((Format::Json, None))));
        assert!(matches!(parse_format(&s(&["json", "lenet"]), None, false), Ok((Format::Json, Some(r))) if r == "lenet"));
        assert!(matches!(parse_format(&s(&["html", "a.html"]), None, false), Ok((Format::Html(p), None)) if p == Path::new("a.html")));
        assert!(matches!(parse_format(&s(&["html=b.html"]), None, false), Ok((Format::Html(p), None)) if p == Path::new("b.html")));
        assert!(matches!(parse_format(&s(&["html"]), Some(Path::new("c.html")), false), Ok((Format::Html(p), None)) if p == Path::new("c.html")));
        assert!(parse_format(&s(&["html"]), None, false).is_err());
        assert!(parse_format(&s(&["yaml"]), None, false).is_err());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(sig(0.012345), "0.01235");
        assert_eq!(sig(0.01f32 as f64), "0.01");
        assert_eq!(sig(2.5), "2.5");
        assert_eq!(sig(-1234.5), "-1234");
        assert_eq!(sig(123456.0), "123500");
        assert_eq!(sig(1e-7), "1e-7");
        assert_eq!(si(4_600_000), "4.6M");
        assert_eq!(shape_str(&[20u64, 1, 5, 5]), "20x1x5x5");
    }
}
