//! Charts drawn with plotters' SVG backend: weight histograms and metric curves (one line per
//! version when several are overlaid).

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// Colours of the versions A, B, C… in charts and in the page's legend.
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub fn colour(k: usize) -> RGBColor {
    PALETTE[k % PALETTE.len()]
}

pub fn css_colour(k: usize) -> String {
    let RGBColor(r, g, b) = colour(k);
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("cannot draw chart: {e}")
}

/// A range that plotters can draw even when all values are equal.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi > lo {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    }
}

/// A histogram of `counts` over equal bins spanning `[min, max]`.
pub fn histogram(title: &str, min: f64, max: f64, counts: &[u64]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (360, 200)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (lo, hi) = if max > min { (min, max) } else { padded(min, max) };
        let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 13))
            .margin(6)
            .x_label_area_size(24)
            .y_label_area_size(44)
            .build_cartesian_2d(lo..hi, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(5)
            .y_labels(4)
            .label_style(("sans-serif", 10))
            .draw()
            .map_err(err)?;
        let width = (hi - lo) / counts.len().max(1) as f64;
        chart
            .draw_series(counts.iter().enumerate().map(|(k, &c)| {
                let x0 = lo + k as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], colour(0).mix(0.8).filled())
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A line of a chart: label, colour index, points `(iteration, value)`.
pub type Line = (String, usize, Vec<(f64, f64)>);

/// One line per series.
pub fn lines(title: &str, series: &[Line]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (480, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let finite = || series.iter().flat_map(|s| s.2.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let (x0, x1) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
        let (y0, y1) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
        let (x0, x1) = if x1 > x0 { (x0, x1) } else { padded(x0, x1) };
        let (y0, y1) = padded(y0, y1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(52)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .x_labels(6)
            .y_labels(5)
            .label_style(("sans-serif", 10))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        for (label, k, pts) in series {
            let c = colour(*k);
            let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(err)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_even_for_degenerate_data() -> Result<()> {
        let h = histogram("w", 0.5, 0.5, &[3])?;
        assert!(h.starts_with("<svg") && h.contains("<rect"), "{h}");
        let l = lines("loss", &[("A".into(), 0, vec![(0.0, 1.0)]), ("B".into(), 1, vec![])])?;
        assert!(l.contains("<svg") && l.contains("loss"), "{l}");
        Ok(())
    }
}
