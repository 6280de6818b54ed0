//! `dlv diff`: two or more versions side by side. The networks are aligned (dlv-graph's
//! `align`) against the first version; aligned layers are compared attribute by attribute and,
//! where their weights have equal shapes, value by value (two tensors streamed at once from the
//! store); metadata, hyper-parameters and metric series are compared as tables.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use anyhow::{anyhow, bail, Result};
use dlv_graph::{align, param_changes, AlignKind, Net, NodeId};
use dlv_store::{short, Repository, TensorEntry};
use serde::Serialize;

use crate::desc::{
    dtype_of, footprint_report, outputs_str, parse_format, phase_str, shape_str, sig, write_html, Format, FootprintReport,
    Loaded, Table, Values,
};
use crate::output::time;
use crate::{html, Cli, DiffArgs};

/// Column letters for versions in text output (A is the base).
pub fn letter(k: usize) -> String {
    let letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    match letters.get(k) {
        Some(&c) => (c as char).to_string(),
        None => format!("V{k}"),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    pub id: String,
    pub short: String,
    pub name: String,
    pub message: String,
    pub author: String,
    pub created: String,
    pub created_ms: i64,
    pub parents: Vec<String>,
    pub layers: usize,
    pub tensors: usize,
    pub parameters: u64,
    pub weight_bytes: u64,
    pub footprint: Option<FootprintReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSide {
    pub name: String,
    #[serde(rename = "type")]
    pub layer_type: String,
    pub outputs: Vec<Option<Vec<usize>>>,
}

/// One difference of a layer against the base version's layer.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Index of the version that differs from version 0.
    pub version: usize,
    /// `name`, `type`, `phase`, `attribute`, `output`, `blob` or `inputs`.
    pub kind: &'static str,
    /// Attribute path or blob name, where the kind has one.
    pub path: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl Change {
    pub fn text(&self) -> String {
        let what = match (&self.path, self.kind) {
            (Some(p), "attribute") => p.clone(),
            (Some(p), k) => format!("{k} {p}"),
            (None, k) => k.to_string(),
        };
        let f = self.from.as_deref().unwrap_or("(none)");
        let t = self.to.as_deref().unwrap_or("(none)");
        format!("{what} {f} -> {t}")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerDiff {
    /// For each version after the first: `same`, `changed`, `renamed`, `moved`, `added`,
    /// `removed`, or `absent` (neither in the base nor in that version).
    pub status: Vec<&'static str>,
    /// The layer in each version, null where it has none.
    pub layers: Vec<Option<LayerSide>>,
    pub changes: Vec<Change>,
    /// The node of each version (for drawing; not part of the JSON).
    #[serde(skip)]
    pub ids: Vec<Option<NodeId>>,
}

/// Distance between two tensors of equal shape.
#[derive(Debug, Clone, Serialize)]
pub struct WeightDelta {
    pub version: usize,
    pub layer: Option<String>,
    pub blob: Option<String>,
    pub tensor: String,
    pub other_tensor: String,
    pub shape: Vec<u64>,
    /// L2 norm of the difference.
    pub l2: f64,
    /// `l2` over the L2 norm of the base tensor; null when that is zero.
    pub relative: Option<f64>,
    /// Fraction of positions where the two values are equal.
    pub equal: f64,
    pub max_abs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldDiff {
    pub key: String,
    pub values: Vec<Option<String>>,
    pub differs: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricDiff {
    pub name: String,
    pub last: Vec<Option<f64>>,
    pub min: Vec<Option<f64>>,
    pub max: Vec<Option<f64>>,
    pub points: Vec<usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub same: usize,
    pub changed: usize,
    pub renamed: usize,
    pub moved: usize,
    pub added: usize,
    pub removed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub versions: Vec<VersionSummary>,
    /// Per version after the first, how its layers relate to the base's.
    pub summary: Vec<Counts>,
    pub layers: Vec<LayerDiff>,
    pub weights: Vec<WeightDelta>,
    pub metadata: Vec<FieldDiff>,
    pub hyper: Vec<FieldDiff>,
    pub metrics: Vec<MetricDiff>,
}

/// Refs from the positional arguments, `--model_names` and `--versions` (each repeatable and
/// comma-separated), in that order; a ref that clap gave to `--output` goes back where it was.
fn refs(args: &DiffArgs, extra: Option<String>) -> Vec<String> {
    let mut positional: Vec<(usize, String)> = args
        .refs
        .iter()
        .enumerate()
        .map(|(k, r)| (args.ref_indices.get(k).copied().unwrap_or(k), r.clone()))
        .collect();
    if let Some(e) = extra {
        positional.push((args.output_index.unwrap_or(usize::MAX), e));
        positional.sort_by_key(|(i, _)| *i);
    }
    let mut out: Vec<String> = positional.into_iter().map(|(_, r)| r).collect();
    for list in [&args.model_names, &args.versions] {
        for item in list {
            out.extend(item.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from));
        }
    }
    out
}

pub fn run(cli: &Cli, start: &Path, args: &DiffArgs, out: &mut dyn Write) -> Result<()> {
    let (format, extra) = parse_format(&args.output, args.out.as_deref(), cli.json)?;
    let refs = refs(args, extra);
    if refs.len() < 2 {
        bail!("dlv diff needs at least two versions (refs, --model_names or --versions), got {}", refs.len());
    }
    let repo = Repository::open(start)?;
    let loaded: Vec<Loaded> = refs.iter().map(|r| Loaded::load(&repo, r)).collect::<Result<_>>()?;
    let report = build(&repo, &loaded)?;
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
        Format::Text => diff_text(&report, out)?,
        Format::Html(path) => {
            let doc = html::diff_page(&repo, &loaded, &report)?;
            write_html(&path, &doc, out)?;
            if !cli.quiet && path != Path::new("-") {
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

fn side(net: &Net, l: &Loaded, id: NodeId) -> Option<LayerSide> {
    let n = net.node(id)?;
    Some(LayerSide {
        name: n.name.clone(),
        layer_type: n.layer_type.clone(),
        outputs: l.shapes.node(id).map(|s| s.outputs.clone()).unwrap_or_default(),
    })
}

/// Rows of node ids, one column per version, in the base's order with other versions' extra
/// layers placed where they occur; and the alignment kind of each cell against the base.
type Rows = Vec<(Vec<Option<NodeId>>, Vec<Option<AlignKind>>)>;

fn merge_rows(loaded: &[Loaded]) -> Rows {
    let n = loaded.len();
    let Some(base) = loaded.first().and_then(|l| l.net.as_ref()) else {
        return Vec::new();
    };
    let mut rows: Rows = loaded[0].order.iter().map(|&id| (one(n, 0, id), vec![None; n])).collect();
    let empty = Net::new("");
    for (k, l) in loaded.iter().enumerate().skip(1) {
        let other = l.net.as_ref().unwrap_or(&empty);
        let al = align(base, other);
        let mut cursor = 0usize;
        for p in &al.pairs {
            match p.left {
                Some(left) => {
                    if let Some(at) = rows.iter().position(|(ids, _)| ids[0] == Some(left)) {
                        rows[at].0[k] = p.right;
                        rows[at].1[k] = Some(p.kind);
                        cursor = at + 1;
                    }
                }
                None => {
                    let Some(right) = p.right else { continue };
                    // Place after the rows already placed for this version, skipping rows that
                    // other versions added right here.
                    let mut ids = vec![None; n];
                    ids[k] = Some(right);
                    let mut kinds = vec![None; n];
                    kinds[k] = Some(AlignKind::Added);
                    rows.insert(cursor.min(rows.len()), (ids, kinds));
                    cursor += 1;
                }
            }
        }
    }
    rows
}

fn one(n: usize, k: usize, id: NodeId) -> Vec<Option<NodeId>> {
    let mut v = vec![None; n];
    v[k] = Some(id);
    v
}

/// Predecessors of a node, looking through the nodes that `skip` says have no counterpart
/// (so an inserted in-place layer does not make its consumer look rewired).
fn effective_prev(net: &Net, id: NodeId, skip: &dyn Fn(NodeId) -> bool) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let mut stack = net.prev(id);
    let mut seen: HashSet<NodeId> = HashSet::new();
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        if skip(p) {
            stack.extend(net.prev(p));
        } else {
            out.insert(p.index());
        }
    }
    out
}

fn layer_changes(loaded: &[Loaded], rows: &Rows, row: usize, k: usize) -> Vec<Change> {
    let mut out = Vec::new();
    let (ids, _) = &rows[row];
    let (Some(a), Some(b)) = (ids[0], ids[k]) else { return out };
    let (Some(na), Some(nb)) = (loaded[0].net.as_ref(), loaded[k].net.as_ref()) else { return out };
    let (Some(x), Some(y)) = (na.node(a), nb.node(b)) else { return out };
    let mut push = |kind: &'static str, path: Option<String>, from: Option<String>, to: Option<String>| {
        out.push(Change { version: k, kind, path, from, to });
    };
    if x.name != y.name {
        push("name", None, Some(x.name.clone()), Some(y.name.clone()));
    }
    if x.layer_type != y.layer_type {
        push("type", None, Some(x.layer_type.clone()), Some(y.layer_type.clone()));
    }
    if x.phase != y.phase {
        push("phase", None, phase_str(x.phase).map(String::from), phase_str(y.phase).map(String::from));
    }
    for c in param_changes(&x.params, &y.params) {
        push("attribute", Some(c.path), c.left, c.right);
    }
    let oa = loaded[0].shapes.node(a).map(|s| s.outputs.clone()).unwrap_or_default();
    let ob = loaded[k].shapes.node(b).map(|s| s.outputs.clone()).unwrap_or_default();
    if oa != ob {
        push("output", None, Some(outputs_str(&oa)), Some(outputs_str(&ob)));
    }
    let blobs = |l: &Loaded, id: NodeId, node: &dlv_graph::Node| -> Vec<(String, Vec<usize>)> {
        match l.shapes.blobs(id) {
            Some(b) if !b.is_empty() => b.iter().map(|b| (b.name.clone(), b.shape.clone())).collect(),
            _ => node.blobs.iter().map(|b| (b.name.clone(), b.shape.clone())).collect(),
        }
    };
    let ba = blobs(&loaded[0], a, x);
    let bb = blobs(&loaded[k], b, y);
    for (name, sa) in &ba {
        let sb = bb.iter().find(|(n, _)| n == name).map(|(_, s)| s);
        if sb != Some(sa) {
            push("blob", Some(name.clone()), Some(shape_str(sa)), sb.map(|s| shape_str(s)));
        }
    }
    for (name, sb) in &bb {
        if !ba.iter().any(|(n, _)| n == name) {
            push("blob", Some(name.clone()), None, Some(shape_str(sb)));
        }
    }
    // Rewiring: the aligned predecessors differ.
    let left_of: BTreeMap<usize, usize> = rows
        .iter()
        .filter_map(|(ids, _)| Some((ids[k]?.index(), ids[0]?.index())))
        .collect();
    let matched_left: HashSet<usize> = left_of.values().copied().collect();
    let pa = effective_prev(na, a, &|p| !matched_left.contains(&p.index()));
    let pb: BTreeSet<usize> = effective_prev(nb, b, &|p| !left_of.contains_key(&p.index()))
        .into_iter()
        .filter_map(|p| left_of.get(&p).copied())
        .collect();
    if pa != pb {
        let names = |net: &Net, s: &BTreeSet<usize>| {
            let v: Vec<String> = s
                .iter()
                .filter_map(|&i| net.node(NodeId::new(i)).map(|n| n.name.clone()))
                .collect();
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(",")
            }
        };
        let pb_right = effective_prev(nb, b, &|p| !left_of.contains_key(&p.index()));
        out.push(Change { version: k, kind: "inputs", path: None, from: Some(names(na, &pa)), to: Some(names(nb, &pb_right)) });
    }
    out
}

fn build(repo: &Repository, loaded: &[Loaded]) -> Result<DiffReport> {
    let n = loaded.len();
    let versions: Vec<VersionSummary> = loaded
        .iter()
        .map(|l| {
            let r = &l.record;
            VersionSummary {
                id: l.id.clone(),
                short: short(&l.id).to_string(),
                name: r.name.clone(),
                message: r.message.clone(),
                author: r.author.clone(),
                created: time(r.created_ms),
                created_ms: r.created_ms,
                parents: r.parents.clone(),
                layers: l.net.as_ref().map(Net::len).unwrap_or(0),
                tensors: r.tensors.len(),
                parameters: r.param_count(),
                weight_bytes: r.weight_bytes(),
                footprint: footprint_report(l),
            }
        })
        .collect();

    let rows = merge_rows(loaded);
    let mut summary = vec![Counts::default(); n.saturating_sub(1)];
    let mut layers = Vec::with_capacity(rows.len());
    for (i, (ids, kinds)) in rows.iter().enumerate() {
        let sides: Vec<Option<LayerSide>> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| loaded[k].net.as_ref().zip(*id).and_then(|(net, id)| side(net, &loaded[k], id)))
            .collect();
        let mut changes = Vec::new();
        let mut status = Vec::with_capacity(n.saturating_sub(1));
        for k in 1..n {
            let c = layer_changes(loaded, &rows, i, k);
            let s = match (ids[0], ids[k], kinds[k]) {
                (_, _, Some(AlignKind::Renamed)) => "renamed",
                (_, _, Some(AlignKind::Moved)) => "moved",
                (Some(_), Some(_), _) if c.is_empty() => "same",
                (Some(_), Some(_), _) => "changed",
                (Some(_), None, _) => "removed",
                (None, Some(_), _) => "added",
                (None, None, _) => "absent",
            };
            let counts = &mut summary[k - 1];
            match s {
                "renamed" => counts.renamed += 1,
                "moved" => counts.moved += 1,
                "same" => counts.same += 1,
                "changed" => counts.changed += 1,
                "removed" => counts.removed += 1,
                "added" => counts.added += 1,
                _ => {}
            }
            status.push(s);
            changes.extend(c);
        }
        layers.push(LayerDiff { status, layers: sides, changes, ids: ids.clone() });
    }

    let weights = weight_deltas(repo, loaded, &rows)?;

    type Field = (&'static str, fn(&Loaded) -> String);
    let meta_fields: [Field; 7] = [
        ("name", |l| l.record.name.clone()),
        ("message", |l| l.record.message.clone()),
        ("author", |l| l.record.author.clone()),
        ("created", |l| time(l.record.created_ms)),
        ("parents", |l| l.record.parents.iter().map(|p| short(p).to_string()).collect::<Vec<_>>().join(",")),
        ("network", |l| l.record.network.as_ref().map(|n| n.name.clone()).unwrap_or_default()),
        ("parameters", |l| l.record.param_count().to_string()),
    ];
    let metadata = meta_fields
        .iter()
        .map(|(key, f)| field_diff(key, loaded.iter().map(|l| Some(f(l))).collect()))
        .collect();

    let keys: BTreeSet<&str> = loaded.iter().flat_map(|l| l.record.hyper.iter().map(|h| h.key.as_str())).collect();
    let hyper = keys
        .into_iter()
        .map(|key| field_diff(key, loaded.iter().map(|l| l.record.hyper(key).map(|h| h.text.clone())).collect()))
        .collect();

    let names: BTreeSet<&str> = loaded.iter().flat_map(|l| l.record.series.iter().map(|s| s.name.as_str())).collect();
    let metrics = names
        .into_iter()
        .map(|name| {
            let series: Vec<_> = loaded.iter().map(|l| l.record.series(name)).collect();
            let fold = |f: fn(f64, f64) -> f64| -> Vec<Option<f64>> {
                series
                    .iter()
                    .map(|s| s.and_then(|s| s.values.iter().copied().filter(|v| v.is_finite()).reduce(f)))
                    .collect()
            };
            MetricDiff {
                name: name.to_string(),
                last: series.iter().map(|s| s.and_then(|s| s.values.last().copied())).collect(),
                min: fold(f64::min),
                max: fold(f64::max),
                points: series.iter().map(|s| s.map(|s| s.values.len()).unwrap_or(0)).collect(),
            }
        })
        .collect();

    Ok(DiffReport { versions, summary, layers, weights, metadata, hyper, metrics })
}

fn field_diff(key: &str, values: Vec<Option<String>>) -> FieldDiff {
    let differs = values.windows(2).any(|w| w[0] != w[1]);
    FieldDiff { key: key.to_string(), values, differs }
}

/// Pairs of tensors to compare: per aligned layer, by blob name; tensors matched to no layer,
/// by tensor name.
fn weight_deltas(repo: &Repository, loaded: &[Loaded], rows: &Rows) -> Result<Vec<WeightDelta>> {
    let mut out = Vec::new();
    let base = &loaded[0];
    for (k, other) in loaded.iter().enumerate().skip(1) {
        let mut pairs: Vec<(&TensorEntry, &TensorEntry)> = Vec::new();
        if let (Some(na), Some(nb)) = (base.net.as_ref(), other.net.as_ref()) {
            for (ids, _) in rows {
                let (Some(a), Some(b)) = (ids[0], ids[k]) else { continue };
                let (Some(x), Some(y)) = (na.node(a), nb.node(b)) else { continue };
                for ta in base.tensors_of(&x.name) {
                    let tb = other.tensors_of(&y.name).find(|tb| tb.blob.is_some() && tb.blob == ta.blob);
                    if let Some(tb) = tb {
                        pairs.push((ta, tb));
                    }
                }
            }
        }
        for ta in &base.record.tensors {
            if ta.layer.is_some() && base.net.is_some() && other.net.is_some() {
                continue;
            }
            if let Some(tb) = other.record.tensors.iter().find(|tb| tb.name == ta.name) {
                if !pairs.iter().any(|(a, _)| std::ptr::eq(*a, ta)) {
                    pairs.push((ta, tb));
                }
            }
        }
        for (ta, tb) in pairs {
            if ta.shape != tb.shape {
                continue;
            }
            out.push(compare(repo, k, ta, tb)?);
        }
    }
    Ok(out)
}

/// Streams two tensors at once: the other one on a scoped thread through a bounded channel, so
/// memory stays at a few chunks whatever the tensor size.
fn compare(repo: &Repository, k: usize, a: &TensorEntry, b: &TensorEntry) -> Result<WeightDelta> {
    let mut d = WeightDelta {
        version: k,
        layer: a.layer.clone(),
        blob: a.blob.clone(),
        tensor: a.name.clone(),
        other_tensor: b.name.clone(),
        shape: a.shape.clone(),
        l2: 0.0,
        relative: None,
        equal: 1.0,
        max_abs: 0.0,
    };
    let (da, db) = (dtype_of(a)?, dtype_of(b)?);
    let n: u64 = a.shape.iter().product();
    if a.object == b.object && da == db {
        // Same content id: identical values. The norm is still read for `relative`.
        let mut norm = 0f64;
        crate::desc::for_each_value(repo, a, |v| norm += v * v)?;
        d.relative = (norm > 0.0).then_some(0.0);
        return Ok(d);
    }
    const BATCH: usize = 16 * 1024;
    let (tx, rx) = mpsc::sync_channel::<Vec<f64>>(4);
    let (mut diff2, mut norm2, mut equal, mut count, mut max_abs) = (0f64, 0f64, 0u64, 0u64, 0f64);
    let mut short_other = false;
    let result: Result<()> = std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            let mut buf = Vec::with_capacity(BATCH);
            let mut sink = Values::new(db, |v| {
                buf.push(v);
                if buf.len() == BATCH {
                    return tx.send(std::mem::replace(&mut buf, Vec::with_capacity(BATCH))).is_ok();
                }
                true
            });
            repo.read_tensor(b, dlv_store::Precision::Full, &mut sink)?;
            drop(sink);
            if !buf.is_empty() {
                let _ = tx.send(buf);
            }
            Ok(())
        });
        let mut cur: Vec<f64> = Vec::new();
        let mut pos = 0usize;
        let left = crate::desc::for_each_value(repo, a, |x| {
            if pos == cur.len() {
                match rx.recv() {
                    Ok(next) => {
                        cur = next;
                        pos = 0;
                    }
                    Err(_) => {
                        short_other = true;
                        return;
                    }
                }
            }
            let Some(&y) = cur.get(pos) else {
                short_other = true;
                return;
            };
            pos += 1;
            count += 1;
            let e = x - y;
            diff2 += e * e;
            norm2 += x * x;
            max_abs = f64::max(max_abs, e.abs());
            if x == y || (x.is_nan() && y.is_nan()) {
                equal += 1;
            }
        });
        drop(rx);
        let right = reader.join().map_err(|_| anyhow!("the reader of tensor {} stopped unexpectedly", b.name))?;
        left?;
        right?;
        Ok(())
    });
    result?;
    if short_other || count != n {
        bail!("tensors {} and {} do not hold the same number of values", a.name, b.name);
    }
    d.l2 = diff2.sqrt();
    d.relative = (norm2 > 0.0).then(|| d.l2 / norm2.sqrt());
    d.equal = if n > 0 { equal as f64 / n as f64 } else { 1.0 };
    d.max_abs = max_abs;
    Ok(d)
}

fn status_cell(s: &[&str]) -> String {
    if s.iter().all(|x| *x == "same") {
        return "=".into();
    }
    s.join("/")
}

fn diff_text(r: &DiffReport, out: &mut dyn Write) -> Result<()> {
    let n = r.versions.len();
    let multi = n > 2;
    writeln!(out, "versions")?;
    let mut t = Table::new(2);
    for (k, v) in r.versions.iter().enumerate() {
        t.row([letter(k), format!("{}@{}", v.name, v.short), v.created.clone(), v.author.clone(), v.message.clone()]);
    }
    t.write(out)?;

    let differing: Vec<&FieldDiff> = r.metadata.iter().filter(|f| f.differs).collect();
    if !differing.is_empty() {
        writeln!(out, "\nmetadata")?;
        let mut t = Table::new(2);
        t.row(std::iter::once("field".to_string()).chain((0..n).map(letter)));
        for f in differing {
            t.row(std::iter::once(f.key.clone()).chain(f.values.iter().map(|v| v.clone().unwrap_or_else(|| "-".into()))));
        }
        t.write(out)?;
    }

    if !r.layers.is_empty() {
        let counts: Vec<String> = r
            .summary
            .iter()
            .enumerate()
            .map(|(k, c)| {
                format!(
                    "{} vs A: {} same, {} changed, {} renamed, {} moved, {} added, {} removed",
                    letter(k + 1),
                    c.same,
                    c.changed,
                    c.renamed,
                    c.moved,
                    c.added,
                    c.removed
                )
            })
            .collect();
        writeln!(out, "\nnetwork ({})", counts.join("; "))?;
        let mut t = Table::new(2);
        let mut head = Vec::new();
        for k in 0..n {
            head.push(letter(k));
            head.push(String::new());
        }
        head.push("status".into());
        head.push("changes".into());
        t.row(head);
        for row in &r.layers {
            let mut cells = Vec::new();
            for l in &row.layers {
                match l {
                    Some(l) => {
                        cells.push(l.name.clone());
                        cells.push(l.layer_type.clone());
                    }
                    None => {
                        cells.push("-".into());
                        cells.push(String::new());
                    }
                }
            }
            cells.push(status_cell(&row.status));
            let changes: Vec<String> = row
                .changes
                .iter()
                .filter(|c| c.kind != "name")
                .map(|c| if multi { format!("{}: {}", letter(c.version), c.text()) } else { c.text() })
                .collect();
            cells.push(changes.join("; "));
            t.row(cells);
        }
        t.write(out)?;
    }

    if !r.weights.is_empty() {
        writeln!(out, "\nweights (aligned layers, equal shapes)")?;
        let mut t = Table::new(2);
        let mut head = vec!["tensor".to_string()];
        if multi {
            head.push("vs".into());
        }
        head.extend(["shape", "L2 diff", "relative", "equal", "max |diff|"].map(String::from));
        t.row(head);
        for w in &r.weights {
            let name = if w.tensor == w.other_tensor { w.tensor.clone() } else { format!("{} ~ {}", w.tensor, w.other_tensor) };
            let mut cells = vec![name];
            if multi {
                cells.push(letter(w.version));
            }
            cells.push(shape_str(&w.shape));
            cells.push(sig(w.l2));
            cells.push(w.relative.map(sig).unwrap_or_else(|| "-".into()));
            cells.push(format!("{:.2}%", w.equal * 100.0));
            cells.push(sig(w.max_abs));
            t.row(cells);
        }
        t.write(out)?;
    }

    let hyper: Vec<&FieldDiff> = r.hyper.iter().filter(|f| f.differs).collect();
    if !r.hyper.is_empty() {
        let same = r.hyper.len() - hyper.len();
        writeln!(out, "\nhyper-parameters ({} differ, {same} equal)", hyper.len())?;
        if !hyper.is_empty() {
            let mut t = Table::new(2);
            t.row(std::iter::once("key".to_string()).chain((0..n).map(letter)));
            for f in hyper {
                t.row(std::iter::once(f.key.clone()).chain(f.values.iter().map(|v| v.clone().unwrap_or_else(|| "-".into()))));
            }
            t.write(out)?;
        }
    }

    if !r.metrics.is_empty() {
        writeln!(out, "\nmetrics (last value, min..max)")?;
        let mut t = Table::new(2);
        t.row(std::iter::once("series".to_string()).chain((0..n).map(letter)));
        for m in &r.metrics {
            let cells = (0..n).map(|k| match (m.last[k], m.min[k], m.max[k]) {
                (Some(l), Some(a), Some(b)) => format!("{} ({}..{})", sig(l), sig(a), sig(b)),
                (Some(l), _, _) => sig(l),
                _ => "-".into(),
            });
            t.row(std::iter::once(m.name.clone()).chain(cells));
        }
        t.write(out)?;
    }

    if r.versions.iter().any(|v| v.footprint.is_some()) {
        writeln!(out, "\nfootprint")?;
        let mut t = Table::new(2);
        t.row(["", "parameters", "FLOPs per batch", "memory per batch"].map(String::from));
        for (k, v) in r.versions.iter().enumerate() {
            match &v.footprint {
                Some(f) => t.row([
                    letter(k),
                    f.parameters.to_string(),
                    crate::desc::si(f.flops),
                    crate::output::bytes(f.memory_bytes),
                ]),
                None => t.row([letter(k), "-".into(), "-".into(), "-".into()]),
            }
        }
        t.write(out)?;
    }
    Ok(())
}
