//! The chart: requests per second of each variant, 90/10 mix and
//! read-only side by side, as an SVG (plotters' SVG backend: no fonts or
//! image libraries needed).

use std::path::Path;

use plotters::prelude::*;

use crate::BenchError;
use crate::run::VariantResult;

const MIXED: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const READ: RGBColor = RGBColor(0x9c, 0xc3, 0xe6);

/// Draws the chart into `path`.
///
/// # Errors
///
/// [`BenchError::Chart`] when it cannot be drawn or written.
pub fn draw(variants: &[VariantResult], path: &Path) -> Result<(), BenchError> {
    let chart_error = |e: &dyn std::fmt::Display| BenchError::Chart(e.to_string());
    let top = variants
        .iter()
        .map(|v| v.mixed.rps.max(v.read.rps))
        .fold(1.0_f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_error(&e))?;
    let n = variants.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cart app over one Redis: requests per second (50 clients)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..top)
        .map_err(|e| chart_error(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("requests / s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| chart_error(&e))?;
    for (i, v) in variants.iter().enumerate() {
        let x = i as f64;
        let bars = [
            (x + 0.12, x + 0.48, v.mixed.rps, MIXED),
            (x + 0.52, x + 0.88, v.read.rps, READ),
        ];
        for (x0, x1, rps, color) in bars {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x1, rps)],
                    color.filled(),
                )))
                .map_err(|e| chart_error(&e))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{rps:.0}"),
                    (x0, rps + top * 0.02),
                    ("sans-serif", 12),
                )))
                .map_err(|e| chart_error(&e))?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                v.variant.short_label().to_owned(),
                (x + 0.05, -top * 0.04),
                ("sans-serif", 12),
            )))
            .map_err(|e| chart_error(&e))?;
    }
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(n as f64 - 0.95, top * 0.97), (n as f64 - 0.88, top * 0.93)],
            MIXED.filled(),
        )))
        .map_err(|e| chart_error(&e))?;
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(n as f64 - 0.95, top * 0.91), (n as f64 - 0.88, top * 0.87)],
            READ.filled(),
        )))
        .map_err(|e| chart_error(&e))?;
    chart
        .draw_series(std::iter::once(Text::new(
            "90 % reads / 10 % adds".to_owned(),
            (n as f64 - 0.85, top * 0.975),
            ("sans-serif", 12),
        )))
        .map_err(|e| chart_error(&e))?;
    chart
        .draw_series(std::iter::once(Text::new(
            "reads only".to_owned(),
            (n as f64 - 0.85, top * 0.915),
            ("sans-serif", 12),
        )))
        .map_err(|e| chart_error(&e))?;
    root.present().map_err(|e| chart_error(&e))?;
    Ok(())
}
