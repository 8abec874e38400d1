//! Latency-percentile plots as SVG, in the style of HdrHistogram's plotter: the percentile on a
//! logarithmic x axis (0%, 90%, 99%, 99.9%, ...: position `log10(1 / (1 - q))`), the latency in
//! microseconds on a linear y axis, one line per series (a LUN, a class, a run), so two runs can
//! be compared at a glance. Drawn by hand: a few hundred bytes of SVG per series, no plotting
//! dependency to build.

use hdrhistogram::Histogram;
use std::fmt::Write;

/// One line of the plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// The latencies (ns).
    pub histogram: Histogram<u64>,
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 290.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const POINTS_PER_DECADE: usize = 100;
const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The label of decade `d` of the x axis: 0%, 90%, 99%, 99.9%, ...
pub fn decade_label(d: u32) -> String {
    match d {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        _ => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// The quantile at x-axis position `x` (in decades).
pub fn quantile_at(x: f64) -> f64 {
    1.0 - 10f64.powf(-x)
}

/// Decades shown: enough for the largest series (a quantile finer than 1/count shows nothing
/// new), 2 to 6.
pub fn decades(series: &[Series]) -> u32 {
    let n = series
        .iter()
        .map(|s| s.histogram.len())
        .max()
        .unwrap_or(0)
        .max(1);
    ((n as f64).log10().ceil() as u32).clamp(2, 6)
}

/// The curve of one histogram: (x in decades, latency in µs), the last point at its maximum.
pub fn curve(h: &Histogram<u64>, decades: u32) -> Vec<(f64, f64)> {
    let steps = decades as usize * POINTS_PER_DECADE;
    (0..=steps)
        .map(|i| {
            let x = f64::from(decades) * i as f64 / steps as f64;
            let v = if i == steps {
                h.max()
            } else {
                h.value_at_quantile(quantile_at(x))
            };
            (x, v as f64 / 1000.0)
        })
        .collect()
}

/// A "nice" axis step (1, 2 or 5 × 10^k) giving about `ticks` ticks up to `max`.
pub fn nice_step(max: f64, ticks: f64) -> f64 {
    if max.is_nan() || max <= 0.0 {
        return 1.0;
    }
    let raw = max / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_us(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The SVG document of `series` (an empty plot with a note when there is none).
pub fn render_svg(title: &str, series: &[Series]) -> String {
    let decades = decades(series);
    let curves: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| curve(&s.histogram, decades))
        .collect();
    let y_max_data = curves
        .iter()
        .flat_map(|c| c.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let step = nice_step(y_max_data, 6.0);
    let y_max = ((y_max_data / step).ceil() * step).max(step);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / f64::from(decades) * plot_w;
    let py = |y: f64| TOP + plot_h - y / y_max * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and axes.
    for d in 0..=decades {
        let x = px(f64::from(d));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            decade_label(d)
        );
    }
    let mut y = 0.0;
    while y <= y_max + step / 2.0 {
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            fmt_us(y)
        );
        y += step;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">latency (µs)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    if series.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no histogram</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    // Lines and legend.
    for (i, (serie, c)) in series.iter().zip(&curves).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = String::new();
        for &(x, y) in c {
            let _ = write!(points, "{:.1},{:.1} ", px(x), py(y));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            points.trim_end(),
            escape(&serie.name)
        );
        let ly = TOP + 10.0 + i as f64 * 36.0;
        let lx = LEFT + plot_w + 16.0;
        let h = &serie.histogram;
        let _ = writeln!(
            s,
            r##"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" font-size="10" fill="#555">n={} p50={} p99={} p99.9={} µs</text>"##,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(&serie.name),
            lx + 26.0,
            ly + 18.0,
            h.len(),
            fmt_us(h.value_at_quantile(0.5) as f64 / 1000.0),
            fmt_us(h.value_at_quantile(0.99) as f64 / 1000.0),
            fmt_us(h.value_at_quantile(0.999) as f64 / 1000.0),
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = crate::stats::new_histogram::<u64>(3);
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn axis_labels_and_positions() {
        assert_eq!(decade_label(0), "0%");
        assert_eq!(decade_label(1), "90%");
        assert_eq!(decade_label(2), "99%");
        assert_eq!(decade_label(4), "99.99%");
        assert!((quantile_at(3.0) - 0.999).abs() < 1e-12);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(nice_step(1000.0, 5.0), 200.0);
        assert_eq!(nice_step(73.0, 6.0), 20.0);
        assert_eq!(nice_step(0.9, 6.0), 0.2);
    }

    #[test]
    fn curve_rises_to_the_max() {
        let values: Vec<u64> = (1..=10_000).map(|i| i * 100).collect();
        let h = hist(&values);
        let s = [Series {
            name: "a".into(),
            histogram: h.clone(),
        }];
        assert_eq!(decades(&s), 4);
        let c = curve(&h, 4);
        assert_eq!(c.len(), 401);
        assert!(c.windows(2).all(|w| w[1].1 >= w[0].1), "monotonic");
        // At 90% (x = 1) the latency is ~900 µs; the last point is the max, 1000 µs.
        let p90 = c[100].1;
        assert!((895.0..=905.0).contains(&p90), "{p90}");
        assert!((c[400].1 - 1000.0).abs() < 1.0, "{}", c[400].1);
    }

    #[test]
    fn svg_has_one_line_per_series() {
        let a = Series {
            name: "run <a>".into(),
            histogram: hist(&[10_000, 20_000, 30_000]),
        };
        let b = Series {
            name: "run b".into(),
            histogram: hist(&[50_000, 60_000]),
        };
        let svg = render_svg("t & u", &[a, b]);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("run &lt;a&gt;") && svg.contains("t &amp; u"));
        assert!(svg.contains(">99%<") && svg.contains(">90%<"));
        let empty = render_svg("none", &[]);
        assert!(empty.contains("no histogram") && !empty.contains("<polyline"));
    }
}
