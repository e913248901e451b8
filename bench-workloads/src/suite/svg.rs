//! Minimal SVG bar charts (grouped bars, one colour per series), written by hand.

use std::fmt::Write;

const COLORS: [&str; 7] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
];

/// A grouped bar chart: `groups` on the x axis, one bar per series in each group.
pub fn bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    log: bool,
) -> String {
    let (w, h, left, bottom, top) = (900.0, 420.0, 80.0, 70.0, 40.0);
    let plot_h = h - bottom - top;
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let min_pos = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min);
    let scale = |v: f64| -> f64 {
        if !v.is_finite() || v <= 0.0 {
            return 0.0;
        }
        if log {
            let lo = (min_pos / 2.0).log10();
            ((v.log10() - lo) / (max.log10() - lo)).clamp(0.0, 1.0) * plot_h
        } else {
            v / max * plot_h
        }
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<rect width="{w}" height="{h}" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        w / 2.0
    );
    let _ = write!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{y_label}{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        if log { " (log)" } else { "" }
    );
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        top + plot_h,
        w - 20.0,
        top + plot_h
    );
    let group_w = (w - left - 20.0) / groups.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    for (g, name) in groups.iter().enumerate() {
        let gx = left + g as f64 * group_w + group_w * 0.1;
        for (k, (_, vals)) in series.iter().enumerate() {
            let v = vals.get(g).copied().unwrap_or(f64::NAN);
            let bh = scale(v);
            let x = gx + k as f64 * bar_w;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{v:.3}</title></rect>"#,
                top + plot_h - bh,
                bar_w * 0.9,
                COLORS[k % COLORS.len()]
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{name}</text>"#,
            gx + group_w * 0.4,
            top + plot_h + 18.0
        );
    }
    for (k, (label, _)) in series.iter().enumerate() {
        let x = left + (k as f64) * 130.0;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{label}</text>"#,
            h - 30.0,
            COLORS[k % COLORS.len()],
            x + 16.0,
            h - 20.0
        );
    }
    s.push_str("</svg>\n");
    s
}
