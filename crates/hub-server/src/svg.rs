//! Server-side drawings: the network DAG as layered boxes and metric series as line charts,
//! both inline SVG (no JavaScript, nothing fetched from elsewhere).

use std::collections::HashMap;
use std::fmt::Write;

use dlv_graph::{Net, NodeId};
use dlv_store::SeriesEntry;

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const BOX_W: i64 = 150;
const BOX_H: i64 = 38;
const GAP_X: i64 = 24;
const GAP_Y: i64 = 30;

fn color(kind: &str) -> &'static str {
    match kind.to_ascii_lowercase().as_str() {
        "convolution" | "deconvolution" => "#cfe3ff",
        "pooling" => "#d9f2d9",
        "innerproduct" => "#ffe0b3",
        "relu" | "sigmoid" | "tanh" | "prelu" => "#f2f2f2",
        "softmax" | "softmaxwithloss" | "accuracy" => "#f8d0d0",
        "data" | "input" | "memorydata" | "imagedata" => "#e6d9f2",
        _ => "#ffffff",
    }
}

/// The network as layered boxes: each node on the row after its deepest predecessor.
pub fn network(net: &Net) -> String {
    let order = match net.topo_order() {
        Ok(o) => o,
        Err(_) => net.node_ids().to_vec(),
    };
    let mut depth: HashMap<NodeId, usize> = HashMap::new();
    for &id in &order {
        let d = net
            .prev(id)
            .iter()
            .filter_map(|p| depth.get(p))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(id, d);
    }
    let mut rows: Vec<Vec<NodeId>> = Vec::new();
    for &id in &order {
        let d = depth.get(&id).copied().unwrap_or(0);
        if rows.len() <= d {
            rows.resize(d + 1, Vec::new());
        }
        rows[d].push(id);
    }
    let widest = rows.iter().map(Vec::len).max().unwrap_or(1).max(1) as i64;
    let width = widest * (BOX_W + GAP_X) + GAP_X;
    let height = rows.len() as i64 * (BOX_H + GAP_Y) + GAP_Y;
    let mut pos: HashMap<NodeId, (i64, i64)> = HashMap::new();
    for (r, row) in rows.iter().enumerate() {
        let row_w = row.len() as i64 * (BOX_W + GAP_X) - GAP_X;
        let x0 = (width - row_w) / 2;
        for (i, id) in row.iter().enumerate() {
            pos.insert(
                *id,
                (
                    x0 + i as i64 * (BOX_W + GAP_X),
                    GAP_Y / 2 + r as i64 * (BOX_H + GAP_Y),
                ),
            );
        }
    }
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="network" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="network {}">"##,
        esc(net.name.as_str())
    );
    s.push_str(r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>"##);
    for (from, to, _) in net.edges() {
        if let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(&from), pos.get(&to)) {
            let _ = write!(
                s,
                r##"<line class="edge" x1="{}" y1="{}" x2="{}" y2="{}" stroke="#555" stroke-width="1.2" marker-end="url(#arrow)"/>"##,
                x1 + BOX_W / 2,
                y1 + BOX_H,
                x2 + BOX_W / 2,
                y2
            );
        }
    }
    for &id in &order {
        let (Some(node), Some(&(x, y))) = (net.node(id), pos.get(&id)) else {
            continue;
        };
        let _ = write!(
            s,
            r##"<g class="node" data-name="{name}"><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="5" fill="{fill}" stroke="#333"/><text x="{cx}" y="{ty1}" text-anchor="middle" font-size="12" font-weight="bold">{name}</text><text x="{cx}" y="{ty2}" text-anchor="middle" font-size="10" fill="#444">{kind}</text></g>"##,
            name = esc(&truncate(&node.name, 22)),
            kind = esc(&truncate(&node.layer_type, 26)),
            fill = color(&node.layer_type),
            cx = x + BOX_W / 2,
            ty1 = y + 15,
            ty2 = y + 30,
        );
    }
    s.push_str("</svg>");
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// A small line chart of one series (value against iteration).
pub fn series(se: &SeriesEntry) -> String {
    let (w, h, pad) = (320.0f64, 120.0f64, 28.0f64);
    let pts: Vec<(f64, f64)> = se
        .iters
        .iter()
        .zip(&se.values)
        .filter(|(_, v)| v.is_finite())
        .map(|(&i, &v)| (i as f64, v))
        .collect();
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{}">"#,
        esc(&se.name)
    );
    if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
        let (x0, x1) = (first.0, last.0.max(first.0 + 1.0));
        let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        let poly: Vec<String> = pts
            .iter()
            .map(|(x, y)| {
                let px = pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
                let py = h - pad - (y - lo) / span * (h - 2.0 * pad);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let _ = write!(
            s,
            r##"<rect x="{pad}" y="{pad}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/><polyline fill="none" stroke="#2266cc" stroke-width="1.5" points="{}"/><text x="{pad}" y="{}" font-size="10">{}</text><text x="{pad}" y="{}" font-size="10">{hi:.4}</text><text x="{pad}" y="{}" font-size="10">{lo:.4}</text>"##,
            w - 2.0 * pad,
            h - 2.0 * pad,
            poly.join(" "),
            pad - 14.0,
            esc(&se.name),
            pad - 3.0,
            h - pad + 12.0,
        );
        if poly.len() <= 60 {
            for p in &poly {
                if let Some((x, y)) = p.split_once(',') {
                    let _ = write!(s, r##"<circle cx="{x}" cy="{y}" r="2.5" fill="#2266cc"/>"##);
                }
            }
        }
    }
    s.push_str("</svg>");
    s
}
