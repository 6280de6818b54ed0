//! HTML reports of `dlv desc` and `dlv diff`: one self-contained file each (inline CSS, inline
//! SVG for the graph and the charts, PNG data URIs for filter images, no script, nothing fetched
//! from the network), so that a report can be mailed or opened offline.

mod charts;
mod graph;
mod images;

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Result;
use dlv_graph::NodeId;
use dlv_store::{short, Repository, TensorEntry};

use crate::desc::{
    footprint_with, histogram, ForwardResult, metric_summaries, outputs_str, read_small, shape_str, si, sig, Loaded, WeightStats,
};
use crate::diff::{letter, DiffReport};
use crate::output::{bytes, time};

/// Bins of the weight histograms.
const BINS: usize = 40;
/// Largest first-layer weight read whole for the filter images.
const FILTER_LIMIT: u64 = 4 << 20;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1f24;background:#f6f7f9}
header{background:#23324a;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}header p{margin:4px 0 0;opacity:.85}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;margin:16px 0;padding:12px 16px}
h2{font-size:16px;margin:4px 0 10px}h3{font-size:14px;margin:8px 0}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #eceef2;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,monospace}
.graphs{display:flex;gap:16px;overflow-x:auto;align-items:flex-start}.graphwrap{overflow:auto;max-height:900px}
svg.graph .node rect{fill:#fff;stroke:#8a94a6;stroke-width:1.2}
svg.graph .node.conv rect{fill:#e3efff}svg.graph .node.pool rect{fill:#e4f6e8}svg.graph .node.fc rect{fill:#efe6fb}
svg.graph .node.act rect{fill:#fff3df}svg.graph .node.norm rect{fill:#fde8f1}svg.graph .node.data rect{fill:#eceff3}
svg.graph .node.loss rect{fill:#fde4e1}
svg.graph .node.added rect{stroke:#2e9d46;stroke-width:3}svg.graph .node.removed rect{stroke:#d33b2f;stroke-width:3;stroke-dasharray:5 3}
svg.graph .node.changed rect,svg.graph .node.renamed rect,svg.graph .node.moved rect{stroke:#e08a00;stroke-width:3}
svg.graph text{text-anchor:middle;font-family:system-ui,sans-serif}svg.graph .name{font-size:12px;font-weight:600}svg.graph .sub{font-size:10px;fill:#555}
svg.graph .edge{fill:none;stroke:#667;stroke-width:1.3}
.charts{display:flex;flex-wrap:wrap;gap:12px}figure.chart{margin:0}figure.chart figcaption{font-size:12px;color:#555}
.layer{border-top:1px solid #eceef2;padding:6px 0}.layer summary{cursor:pointer}.muted{color:#777}
tr.added td{background:#e9f7ec}tr.removed td{background:#fdecea}tr.changed td,tr.renamed td,tr.moved td{background:#fff4e0}
img.filters{image-rendering:pixelated;border:1px solid #ccc}
.key{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:middle}
"#;

fn page(title: &str, subtitle: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{CSS}</style></head>\n<body><header><h1>{}</h1><p>{}</p></header><main>\n{body}</main></body></html>\n",
        esc(title),
        esc(title),
        esc(subtitle)
    )
}

fn num(x: impl std::fmt::Display) -> String {
    format!("<td class=\"num\">{x}</td>")
}

/// Points of a series as `(iteration, value)`.
fn points(s: &dlv_store::SeriesEntry) -> Vec<(f64, f64)> {
    s.iters.iter().zip(&s.values).map(|(&i, &v)| (i as f64, v)).collect()
}

// ---------------------------------------------------------------------------------------------
// desc

pub fn desc_page(repo: &Repository, l: &Loaded, stats: &[WeightStats], forward: &ForwardResult, layer: Option<&str>) -> Result<String> {
    let r = &l.record;
    let mut b = String::new();

    // Record.
    b.push_str("<section id=\"version\"><h2>Version</h2><table>");
    let _ = write!(b, "<tr><th>name</th><td>{}</td></tr>", esc(&r.name));
    let _ = write!(b, "<tr><th>id</th><td><code>{}</code></td></tr>", esc(&l.id));
    for p in &r.parents {
        let name = repo.get(p).map(|pr| pr.name).unwrap_or_else(|_| "?".into());
        let _ = write!(b, "<tr><th>parent</th><td>{}@{}</td></tr>", esc(&name), esc(short(p)));
    }
    let _ = write!(b, "<tr><th>author</th><td>{}</td></tr>", esc(&r.author));
    let _ = write!(b, "<tr><th>created</th><td>{}</td></tr>", esc(&time(r.created_ms)));
    let _ = write!(b, "<tr><th>message</th><td>{}</td></tr>", esc(&r.message));
    b.push_str("</table></section>\n");

    // Footprint.
    if let Some(f) = footprint_with(l, Some(forward)) {
        b.push_str("<section id=\"footprint\"><h2>Execution footprint</h2><table>");
        let batch = f.batch.map(|x| x.to_string()).unwrap_or_else(|| "?".into());
        let _ = write!(b, "<tr><th>batch</th><td>{batch}</td></tr>");
        let _ = write!(b, "<tr><th>parameters</th><td>{} ({})</td></tr>", f.parameters, bytes(f.parameter_bytes));
        let _ = write!(
            b,
            "<tr><th>memory per batch</th><td>{} (activations {}, parameters {})</td></tr>",
            bytes(f.memory_bytes),
            bytes(f.activation_bytes),
            bytes(f.parameter_bytes)
        );
        let bound = if f.flops_complete { "" } else { " (at least; some layers unknown)" };
        let _ = write!(b, "<tr><th>FLOPs per batch</th><td>{} ({}){bound}</td></tr>", si(f.flops), f.flops);
        match f.forward_ms_per_batch {
            Some(ms) => {
                let _ = write!(b, "<tr><th>forward time</th><td>{} ms per batch <span class=\"muted\">({})</span></td></tr>", sig(ms), esc(&f.forward_note));
            }
            None => {
                let _ = write!(b, "<tr><th>forward time</th><td class=\"muted\">{}</td></tr>", esc(&f.forward_note));
            }
        }
        b.push_str("</table></section>\n");
    }

    // Graph and layers.
    let stats_of: HashMap<&str, &WeightStats> = stats.iter().map(|s| (s.tensor.as_str(), s)).collect();
    if let Some(net) = &l.net {
        let index: HashMap<NodeId, usize> = l.order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let svg = graph::svg(net, &l.order, &l.shapes, "graph", &|id| graph::NodeStyle {
            mark: None,
            href: index.get(&id).map(|i| format!("layer-{i}")),
            note: None,
        });
        let _ = writeln!(
            b,
            "<section id=\"network\"><h2>Network {} ({} layers)</h2><div class=\"graphwrap\">{svg}</div></section>",
            esc(&net.name),
            net.len()
        );

        b.push_str("<section id=\"layers\"><h2>Layers</h2>");
        for (i, row) in l.layers().iter().enumerate() {
            let _ = write!(
                b,
                "<details class=\"layer\" id=\"layer-{i}\"{}><summary><b>{}</b> <span class=\"muted\">{}</span> → {}</summary>",
                if row.params > 0 { " open" } else { "" },
                esc(&row.name),
                esc(&row.layer_type),
                esc(&outputs_str(&row.outputs))
            );
            b.push_str("<table>");
            if let Some(p) = row.phase {
                let _ = write!(b, "<tr><th>phase</th><td>{p}</td></tr>");
            }
            let _ = write!(b, "<tr><th>inputs</th><td>{}</td></tr>", esc(&row.bottoms.join(", ")));
            let _ = write!(b, "<tr><th>outputs</th><td>{}</td></tr>", esc(&row.tops.join(", ")));
            for (k, v) in &row.attributes {
                let _ = write!(b, "<tr><th>{}</th><td><code>{}</code></td></tr>", esc(k), esc(v));
            }
            if let Some(f) = row.flops {
                let _ = write!(b, "<tr><th>FLOPs</th><td>{} ({f})</td></tr>", si(f));
            }
            b.push_str("</table>");
            if !row.blobs.is_empty() {
                b.push_str("<h3>Parameters</h3><table><tr><th>blob</th><th>shape</th><th>count</th></tr>");
                for bl in &row.blobs {
                    let _ = write!(b, "<tr><td>{}</td><td>{}</td>{}</tr>", esc(&bl.name), shape_str(&bl.shape), num(bl.count));
                }
                b.push_str("</table>");
            }
            let tensors: Vec<&TensorEntry> = l.tensors_of(&row.name).collect();
            if !tensors.is_empty() {
                b.push_str("<div class=\"charts\">");
                for t in tensors {
                    if let Some(s) = stats_of.get(t.name.as_str()) {
                        let h = histogram(repo, t, s.min, s.max, BINS)?;
                        let svg = charts::histogram(&t.name, s.min, s.max, &h)?;
                        let _ = write!(
                            b,
                            "<figure class=\"chart histogram\">{svg}<figcaption>{} {} · min {} max {} mean {} std {} · zeros {:.2}%</figcaption></figure>",
                            esc(&t.name),
                            shape_str(&t.shape),
                            sig(s.min),
                            sig(s.max),
                            sig(s.mean),
                            sig(s.std),
                            s.zeros * 100.0
                        );
                    }
                }
                b.push_str("</div>");
            }
            b.push_str("</details>");
        }
        b.push_str("</section>\n");

        // First convolution's filters.
        let first_conv = l.order.iter().filter_map(|&id| net.node(id)).find(|n| n.layer_type == "Convolution");
        if let Some(conv) = first_conv {
            let weight = l.tensors_of(&conv.name).find(|t| t.blob.as_deref() == Some("weight"));
            b.push_str("<section id=\"filters\"><h2>Filters of the first convolution</h2>");
            match weight {
                Some(t) => {
                    let shape: Vec<usize> = t.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
                    let img = match read_small(repo, t, FILTER_LIMIT)? {
                        Some(v) => images::filter_mosaic(&shape, &v)?,
                        None => None,
                    };
                    match img {
                        Some((uri, n)) => {
                            let what = if shape.get(1) == Some(&3) { "RGB" } else { "first input channel, grey" };
                            let _ = write!(
                                b,
                                "<p>{} ({}): {n} of {} filters, each scaled to its own range ({what}).</p><img class=\"filters\" alt=\"filters of {}\" src=\"{uri}\">",
                                esc(&conv.name),
                                shape_str(&t.shape),
                                shape.first().copied().unwrap_or(0),
                                esc(&conv.name)
                            );
                        }
                        None => {
                            let _ = write!(b, "<p class=\"muted\">{} has a weight of shape {} that is not drawn.</p>", esc(&conv.name), shape_str(&t.shape));
                        }
                    }
                }
                None => {
                    let _ = write!(b, "<p class=\"muted\">{} has no weights in this version.</p>", esc(&conv.name));
                }
            }
            b.push_str("</section>\n");
        }

        activations_section(&mut b, net, l, forward, layer)?;
    } else if !stats.is_empty() {
        b.push_str("<section id=\"weights\"><h2>Weights</h2><div class=\"charts\">");
        for (t, s) in r.tensors.iter().zip(stats) {
            let h = histogram(repo, t, s.min, s.max, BINS)?;
            let svg = charts::histogram(&t.name, s.min, s.max, &h)?;
            let _ = write!(b, "<figure class=\"chart histogram\">{svg}<figcaption>{}</figcaption></figure>", esc(&t.name));
        }
        b.push_str("</div></section>\n");
    }

    // Weight statistics table.
    if !stats.is_empty() {
        b.push_str("<section id=\"weight-stats\"><h2>Weight statistics</h2><table><tr><th>tensor</th><th>dtype</th><th>shape</th><th>count</th><th>min</th><th>max</th><th>mean</th><th>std</th><th>zeros</th></tr>");
        for (t, s) in r.tensors.iter().zip(stats) {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td>{}{}{}{}{}{}</tr>",
                esc(&t.name),
                esc(&t.dtype),
                shape_str(&t.shape),
                num(s.count),
                num(sig(s.min)),
                num(sig(s.max)),
                num(sig(s.mean)),
                num(sig(s.std)),
                num(format!("{:.2}%", s.zeros * 100.0))
            );
        }
        b.push_str("</table></section>\n");
    }

    // Metrics.
    if !r.series.is_empty() {
        b.push_str("<section id=\"metrics\"><h2>Metrics</h2><div class=\"charts\">");
        for s in &r.series {
            let svg = charts::lines(&s.name, &[(s.name.clone(), 0, points(s))])?;
            let _ = write!(b, "<figure class=\"chart metric\" data-series=\"{}\">{svg}</figure>", esc(&s.name));
        }
        b.push_str("</div><table><tr><th>series</th><th>points</th><th>last</th><th>min</th><th>max</th></tr>");
        for m in metric_summaries(r) {
            let f = |v: Option<f64>| v.map(sig).unwrap_or_else(|| "-".into());
            let _ = write!(b, "<tr><td>{}</td>{}{}{}{}</tr>", esc(&m.name), num(m.points), num(f(m.last)), num(f(m.min)), num(f(m.max)));
        }
        b.push_str("</table></section>\n");
    }

    if !r.hyper.is_empty() {
        b.push_str("<section id=\"hyper\"><h2>Hyper-parameters</h2><table>");
        for h in &r.hyper {
            let _ = write!(b, "<tr><th>{}</th><td><code>{}</code></td></tr>", esc(&h.key), esc(&h.text));
        }
        b.push_str("</table></section>\n");
    }

    if !r.tensors.is_empty() {
        let _ = write!(
            b,
            "<section id=\"parameters\"><h2>Parameters: {} tensors, {} values, {}</h2><table><tr><th>tensor</th><th>layer</th><th>dtype</th><th>shape</th><th>count</th><th>bytes</th></tr>",
            r.tensors.len(),
            r.param_count(),
            bytes(r.weight_bytes())
        );
        for t in &r.tensors {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}{}</tr>",
                esc(&t.name),
                esc(t.layer.as_deref().unwrap_or("-")),
                esc(&t.dtype),
                shape_str(&t.shape),
                num(t.shape.iter().product::<u64>()),
                num(bytes(t.bytes))
            );
        }
        b.push_str("</table></section>\n");
    }

    if !r.files.is_empty() {
        b.push_str("<section id=\"files\"><h2>Files</h2><table>");
        for f in &r.files {
            let _ = write!(b, "<tr><td>{}</td><td>{}</td>{}</tr>", esc(&f.role), esc(&f.path), num(bytes(f.size)));
        }
        b.push_str("</table></section>\n");
    }

    let subtitle = format!("{} · {} · {}", time(r.created_ms), r.author, r.message);
    Ok(page(&format!("dlv desc {}", l.label()), &subtitle, &b))
}

// ---------------------------------------------------------------------------------------------
// diff

/// Activation maps of `layer` (default: the first convolution) for the forward pass's sample
/// input, one grey tile per channel, each scaled to its own range.
fn activations_section(b: &mut String, net: &dlv_graph::Net, l: &Loaded, forward: &ForwardResult, layer: Option<&str>) -> Result<()> {
    b.push_str("<section id=\"activations\"><h2>Activations</h2>");
    let chosen = match layer {
        Some(name) => net.nodes().find(|n| n.name == name),
        None => l.order.iter().filter_map(|&id| net.node(id)).find(|n| n.layer_type == "Convolution"),
    };
    match (forward, chosen) {
        (Err(why), _) => {
            let _ = write!(b, "<p class=\"muted\">Activation maps need a forward pass of a sample input; not measured: {}.</p>", esc(why));
        }
        (Ok(_), None) => {
            b.push_str("<p class=\"muted\">No convolution to draw the activations of (choose a layer with --layer NAME).</p>");
        }
        (Ok(f), Some(node)) => {
            let blob = node.tops.first().and_then(|top| f.blobs.iter().find(|s| &s.name == top));
            match blob {
                Some(s) => {
                    let dims = &s.shape;
                    let (c, h, w) = match dims.len() {
                        4 => (dims[1], dims[2], dims[3]),
                        3 => (dims[1], 1, dims[2]),
                        _ => (1, 1, dims.get(1..).map(|d| d.iter().product()).unwrap_or(0)),
                    };
                    let img = if s.first.len() == c * h * w && !s.first.is_empty() { images::filter_mosaic(&[c, 1, h, w], &s.first)? } else { None };
                    match img {
                        Some((uri, n)) => {
                            let _ = write!(
                                b,
                                "<p>{} ({}, output {}): {n} of {c} channel(s) for the first example of a pseudo-random input, each scaled to its own range (batch min {}, max {}, mean {}).</p><img class=\"filters\" alt=\"activations of {}\" src=\"{uri}\">",
                                esc(&node.name),
                                esc(&node.layer_type),
                                shape_str(dims),
                                sig(f64::from(s.min)),
                                sig(f64::from(s.max)),
                                sig(f64::from(s.mean)),
                                esc(&node.name)
                            );
                        }
                        None => {
                            let _ = write!(b, "<p class=\"muted\">{} has an output of shape {} that is not drawn.</p>", esc(&node.name), shape_str(dims));
                        }
                    }
                }
                None => {
                    let _ = write!(b, "<p class=\"muted\">{} produced no output in the TEST phase.</p>", esc(&node.name));
                }
            }
        }
    }
    b.push_str("</section>\n");
    Ok(())
}

pub fn diff_page(_repo: &Repository, loaded: &[Loaded], r: &DiffReport) -> Result<String> {
    let n = r.versions.len();
    let mut b = String::new();

    b.push_str("<section id=\"versions\"><h2>Versions</h2><table><tr><th></th><th>version</th><th>created</th><th>author</th><th>message</th><th>parameters</th><th>FLOPs</th><th>memory</th></tr>");
    for (k, v) in r.versions.iter().enumerate() {
        let (p, f, m) = match &v.footprint {
            Some(f) => (f.parameters.to_string(), si(f.flops), bytes(f.memory_bytes)),
            None => (v.parameters.to_string(), "-".into(), "-".into()),
        };
        let _ = write!(
            b,
            "<tr><td><span class=\"key\" style=\"background:{}\"></span>{}</td><td>{}@{}</td><td>{}</td><td>{}</td><td>{}</td>{}{}{}</tr>",
            charts::css_colour(k),
            letter(k),
            esc(&v.name),
            esc(&v.short),
            esc(&v.created),
            esc(&v.author),
            esc(&v.message),
            num(p),
            num(f),
            num(m)
        );
    }
    b.push_str("</table></section>\n");

    let differing: Vec<_> = r.metadata.iter().filter(|f| f.differs).collect();
    if !differing.is_empty() {
        b.push_str("<section id=\"metadata\"><h2>Metadata differences</h2><table><tr><th>field</th>");
        for k in 0..n {
            let _ = write!(b, "<th>{}</th>", letter(k));
        }
        b.push_str("</tr>");
        for f in differing {
            let _ = write!(b, "<tr><th>{}</th>", esc(&f.key));
            for v in &f.values {
                let _ = write!(b, "<td>{}</td>", esc(v.as_deref().unwrap_or("-")));
            }
            b.push_str("</tr>");
        }
        b.push_str("</table></section>\n");
    }

    // Graphs side by side, marked against the base.
    if loaded.iter().any(|l| l.net.is_some()) {
        let mut marks: Vec<HashMap<NodeId, &'static str>> = vec![HashMap::new(); n];
        let mut rows_of: Vec<HashMap<NodeId, usize>> = vec![HashMap::new(); n];
        for (ri, row) in r.layers.iter().enumerate() {
            for k in 0..n {
                let Some(Some(id)) = row.ids.get(k).copied() else { continue };
                rows_of[k].insert(id, ri);
                let mark = if k == 0 {
                    if row.status.contains(&"removed") {
                        Some("removed")
                    } else if row.status.iter().any(|s| matches!(*s, "changed" | "renamed" | "moved")) {
                        Some("changed")
                    } else {
                        None
                    }
                } else {
                    match row.status.get(k - 1).copied() {
                        Some("added") => Some("added"),
                        Some("changed") => Some("changed"),
                        Some("renamed") => Some("renamed"),
                        Some("moved") => Some("moved"),
                        _ => None,
                    }
                };
                if let Some(m) = mark {
                    marks[k].insert(id, m);
                }
            }
        }
        b.push_str("<section id=\"networks\"><h2>Networks</h2><p class=\"muted\">Aligned against A: green added, red dashed removed, orange changed or renamed. Click a layer for its row.</p><div class=\"graphs\">");
        for (k, l) in loaded.iter().enumerate() {
            let Some(net) = &l.net else { continue };
            let svg = graph::svg(net, &l.order, &l.shapes, &format!("graph-{k}"), &|id| graph::NodeStyle {
                mark: marks[k].get(&id).copied(),
                href: rows_of[k].get(&id).map(|ri| format!("row-{ri}")),
                note: marks[k].get(&id).map(|m| m.to_string()),
            });
            let _ = write!(b, "<div><h3>{} {}</h3><div class=\"graphwrap\">{svg}</div></div>", letter(k), esc(&l.label()));
        }
        b.push_str("</div></section>\n");
    }

    if !r.layers.is_empty() {
        b.push_str("<section id=\"layers\"><h2>Layers</h2><table><tr>");
        for k in 0..n {
            let _ = write!(b, "<th>{}</th><th>type</th><th>output</th>", letter(k));
        }
        b.push_str("<th>status</th><th>changes</th></tr>");
        for (ri, row) in r.layers.iter().enumerate() {
            let class = row.status.iter().find(|s| !matches!(**s, "same" | "absent")).copied().unwrap_or("same");
            let _ = write!(b, "<tr id=\"row-{ri}\" class=\"{class}\">");
            for side in &row.layers {
                match side {
                    Some(s) => {
                        let _ = write!(b, "<td>{}</td><td>{}</td><td>{}</td>", esc(&s.name), esc(&s.layer_type), esc(&outputs_str(&s.outputs)));
                    }
                    None => b.push_str("<td>-</td><td></td><td></td>"),
                }
            }
            let changes: Vec<String> = row
                .changes
                .iter()
                .filter(|c| c.kind != "name")
                .map(|c| if n > 2 { format!("{}: {}", letter(c.version), c.text()) } else { c.text() })
                .collect();
            let _ = write!(b, "<td>{}</td><td>{}</td></tr>", esc(&row.status.join("/")), esc(&changes.join("; ")));
        }
        b.push_str("</table></section>\n");
    }

    if !r.weights.is_empty() {
        b.push_str("<section id=\"weights\"><h2>Weights of aligned layers</h2><table><tr><th>tensor</th><th>vs</th><th>shape</th><th>L2 diff</th><th>relative</th><th>equal</th><th>max |diff|</th></tr>");
        for w in &r.weights {
            let name = if w.tensor == w.other_tensor { w.tensor.clone() } else { format!("{} ~ {}", w.tensor, w.other_tensor) };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td>{}{}{}{}</tr>",
                esc(&name),
                letter(w.version),
                shape_str(&w.shape),
                num(sig(w.l2)),
                num(w.relative.map(sig).unwrap_or_else(|| "-".into())),
                num(format!("{:.2}%", w.equal * 100.0)),
                num(sig(w.max_abs))
            );
        }
        b.push_str("</table></section>\n");
    }

    if !r.hyper.is_empty() {
        b.push_str("<section id=\"hyper\"><h2>Hyper-parameters</h2><table><tr><th>key</th>");
        for k in 0..n {
            let _ = write!(b, "<th>{}</th>", letter(k));
        }
        b.push_str("</tr>");
        for f in &r.hyper {
            let _ = write!(b, "<tr class=\"{}\"><th>{}</th>", if f.differs { "changed" } else { "same" }, esc(&f.key));
            for v in &f.values {
                let _ = write!(b, "<td><code>{}</code></td>", esc(v.as_deref().unwrap_or("-")));
            }
            b.push_str("</tr>");
        }
        b.push_str("</table></section>\n");
    }

    if !r.metrics.is_empty() {
        b.push_str("<section id=\"metrics\"><h2>Metrics overlaid</h2><div class=\"charts\">");
        for m in &r.metrics {
            let series: Vec<charts::Line> = loaded
                .iter()
                .enumerate()
                .filter_map(|(k, l)| l.record.series(&m.name).map(|s| (format!("{} {}", letter(k), l.label()), k, points(s))))
                .collect();
            let svg = charts::lines(&m.name, &series)?;
            let _ = write!(b, "<figure class=\"chart metric\" data-series=\"{}\">{svg}</figure>", esc(&m.name));
        }
        b.push_str("</div></section>\n");
    }

    let labels: Vec<String> = loaded.iter().map(Loaded::label).collect();
    Ok(page(&format!("dlv diff {}", labels.join(" ")), &format!("{} versions aligned against {}", n, labels.first().cloned().unwrap_or_default()), &b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
