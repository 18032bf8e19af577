//! The bench's two SVG charts: admitted grants per bin against the limit,
//! and the distribution of decision latency.

use plotters::prelude::*;
use std::path::Path;

type Result<T> = std::result::Result<T, String>;

fn failed(path: &Path) -> impl Fn(String) -> String + '_ {
    move |e| format!("drawing {}: {e}", path.display())
}

/// Grants per `bin_ms` over the run, with the configured limit per bin as a
/// line (none for a limiter without a rate).
pub fn grants(
    path: &Path,
    title: &str,
    per_bin: &[u64],
    bin_ms: u64,
    limit_per_bin: Option<f64>,
) -> Result<()> {
    let err = failed(path);
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let seconds = per_bin.len() as f64 * bin_ms as f64 / 1e3;
    let top = per_bin
        .iter()
        .map(|&v| v as f64)
        .chain(limit_per_bin)
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds.max(0.1), 0.0..top)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first grant")
        .y_desc(format!("grants per {bin_ms} ms"))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let step = bin_ms as f64 / 1e3;
    // The limit goes under the grants, dashed, so a limiter that tracks it
    // exactly still shows both.
    if let Some(limit) = limit_per_bin {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, limit), (seconds, limit)],
                8,
                6,
                RED.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?
            .label("configured limit")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart
        .draw_series(LineSeries::new(
            per_bin
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as f64 * step, v as f64)),
            BLUE.stroke_width(1),
        ))
        .map_err(|e| err(e.to_string()))?
        .label("admitted")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// Latency as a distribution: the share of calls (y) that took at most
/// x µs, on a log x axis, from the percentiles given as (quantile, µs).
pub fn latency(path: &Path, title: &str, quantiles: &[(f64, u64)]) -> Result<()> {
    let err = failed(path);
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let lo = quantiles.iter().map(|q| q.1).min().unwrap_or(1).max(1) as f64;
    let hi = quantiles.iter().map(|q| q.1).max().unwrap_or(10).max(2) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..100.0)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("latency of one call, µs (log scale)")
        .y_desc("% of calls at or below")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(
            quantiles
                .iter()
                .map(|&(q, us)| (us.max(1) as f64, q * 100.0)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(e.to_string()))?;
    for (row, (q, label)) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")]
        .into_iter()
        .enumerate()
    {
        if let Some(&(_, us)) = quantiles.iter().find(|p| (p.0 - q).abs() < 1e-9) {
            chart
                .draw_series([Circle::new((us.max(1) as f64, q * 100.0), 4, RED.filled())])
                .map_err(|e| err(e.to_string()))?;
            root.draw(&Text::new(
                format!("{label} {us} µs"),
                (90, 50 + 18 * row as i32),
                ("sans-serif", 14),
            ))
            .map_err(|e| err(e.to_string()))?;
        }
    }
    root.present().map_err(|e| err(e.to_string()))
}
