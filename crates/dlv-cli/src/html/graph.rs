//! The network drawn as SVG, laid out here: layers in rows by topological depth (longest path
//! from an input), each row ordered by the mean position of the layers that feed it, edges as
//! cubic paths from the bottom of a producer to the top of a consumer.

use std::collections::HashMap;
use std::fmt::Write as _;

use dlv_graph::{Net, NodeId, ShapeInfo};

use super::esc;
use crate::desc::outputs_str;

const W: f64 = 168.0;
const H: f64 = 46.0;
const GAP_X: f64 = 24.0;
const GAP_Y: f64 = 34.0;
const PAD: f64 = 12.0;

/// How the caller wants a node shown.
pub struct NodeStyle {
    /// Extra CSS class (`added`, `removed`, `changed`, `renamed`).
    pub mark: Option<&'static str>,
    /// Fragment the node links to (`layer-3`).
    pub href: Option<String>,
    /// Extra line for the tooltip.
    pub note: Option<String>,
}

/// Colour class of a layer type.
fn kind(layer_type: &str) -> &'static str {
    match layer_type {
        "Convolution" | "Deconvolution" => "conv",
        "Pooling" => "pool",
        "InnerProduct" | "Embed" => "fc",
        "ReLU" | "PReLU" | "ELU" | "Sigmoid" | "TanH" | "Dropout" | "BNLL" | "AbsVal" | "Power" => "act",
        "BatchNorm" | "Scale" | "LRN" | "MVN" | "Bias" => "norm",
        "Input" | "Data" | "ImageData" | "MemoryData" | "HDF5Data" | "WindowData" | "DummyData" => "data",
        t if t.contains("Loss") || t == "Accuracy" || t == "Softmax" => "loss",
        _ => "other",
    }
}

/// Row (depth) and order of each node.
fn layout(net: &Net, order: &[NodeId]) -> (HashMap<NodeId, (f64, f64)>, f64, f64) {
    let mut depth: HashMap<NodeId, usize> = HashMap::new();
    for &id in order {
        let d = net.prev(id).iter().filter_map(|p| depth.get(p)).map(|d| d + 1).max().unwrap_or(0);
        depth.insert(id, d);
    }
    let rows = depth.values().copied().max().map(|m| m + 1).unwrap_or(0);
    let mut levels: Vec<Vec<NodeId>> = vec![Vec::new(); rows];
    for &id in order {
        if let Some(&d) = depth.get(&id) {
            levels[d].push(id);
        }
    }
    let widest = levels.iter().map(Vec::len).max().unwrap_or(0) as f64;
    let width = PAD * 2.0 + widest * W + (widest - 1.0).max(0.0) * GAP_X;
    let mut pos: HashMap<NodeId, (f64, f64)> = HashMap::new();
    let rank: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    for (d, level) in levels.iter_mut().enumerate() {
        // Barycentre of the producers' x, then topological rank.
        let key = |id: &NodeId| {
            let xs: Vec<f64> = net.prev(*id).iter().filter_map(|p| pos.get(p)).map(|p| p.0).collect();
            let bary = if xs.is_empty() { f64::MAX } else { xs.iter().sum::<f64>() / xs.len() as f64 };
            (bary, rank.get(id).copied().unwrap_or(usize::MAX))
        };
        let mut keyed: Vec<((f64, usize), NodeId)> = level.iter().map(|id| (key(id), *id)).collect();
        keyed.sort_by(|a, b| a.0 .0.total_cmp(&b.0 .0).then(a.0 .1.cmp(&b.0 .1)));
        *level = keyed.into_iter().map(|(_, id)| id).collect();
        let n = level.len() as f64;
        let row_w = n * W + (n - 1.0).max(0.0) * GAP_X;
        let x0 = (width - row_w) / 2.0;
        let y = PAD + d as f64 * (H + GAP_Y);
        for (k, &id) in level.iter().enumerate() {
            pos.insert(id, (x0 + k as f64 * (W + GAP_X), y));
        }
    }
    let height = PAD * 2.0 + rows as f64 * H + (rows as f64 - 1.0).max(0.0) * GAP_Y;
    (pos, width.max(W + 2.0 * PAD), height.max(H + 2.0 * PAD))
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The whole graph as an `<svg>` element with id `id`.
pub fn svg(net: &Net, order: &[NodeId], shapes: &ShapeInfo, id: &str, style: &dyn Fn(NodeId) -> NodeStyle) -> String {
    let (pos, width, height) = layout(net, order);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="graph" id="{}" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="network graph of {}">"#,
        esc(id),
        esc(&net.name)
    );
    let _ = write!(
        s,
        r##"<defs><marker id="{}-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker></defs>"##,
        esc(id)
    );
    s.push_str(r#"<g class="edges">"#);
    for (from, to, blob) in net.edges() {
        let (Some(&(fx, fy)), Some(&(tx, ty))) = (pos.get(&from), pos.get(&to)) else { continue };
        let (sx, sy) = (fx + W / 2.0, fy + H);
        let (ex, ey) = (tx + W / 2.0, ty);
        let dy = ((ey - sy) / 2.0).max(12.0);
        let _ = write!(
            s,
            r#"<path class="edge" d="M{sx:.1},{sy:.1} C{sx:.1},{:.1} {ex:.1},{:.1} {ex:.1},{ey:.1}" marker-end="url(#{}-arrow)"><title>{}</title></path>"#,
            sy + dy,
            ey - dy,
            esc(id),
            esc(blob)
        );
    }
    s.push_str("</g><g class=\"nodes\">");
    for &n in order {
        let (Some(node), Some(&(x, y))) = (net.node(n), pos.get(&n)) else { continue };
        let st = style(n);
        let out = shapes.node(n).map(|s| outputs_str(&s.outputs)).unwrap_or_default();
        let class = match st.mark {
            Some(m) => format!("node {} {m}", kind(&node.layer_type)),
            None => format!("node {}", kind(&node.layer_type)),
        };
        let mut title = format!("{} ({})\noutput {}", node.name, node.layer_type, out);
        if let Some(note) = &st.note {
            title.push('\n');
            title.push_str(note);
        }
        if let Some(h) = &st.href {
            let _ = write!(s, r##"<a href="#{}">"##, esc(h));
        }
        let _ = write!(
            s,
            r#"<g class="{class}" data-layer="{}"><title>{}</title><rect x="{x:.1}" y="{y:.1}" width="{W}" height="{H}" rx="6"/><text x="{:.1}" y="{:.1}" class="name">{}</text><text x="{:.1}" y="{:.1}" class="sub">{} · {}</text></g>"#,
            esc(&node.name),
            esc(&title),
            x + W / 2.0,
            y + 18.0,
            esc(&clip(&node.name, 22)),
            x + W / 2.0,
            y + 35.0,
            esc(&clip(&node.layer_type, 14)),
            esc(&clip(&out, 14)),
        );
        if st.href.is_some() {
            s.push_str("</a>");
        }
    }
    s.push_str("</g></svg>");
    s
}
