//! The `compare --svg` chart: wall time and peak memory per executor, as grouped bars (plotters, SVG backend:
//! no system fonts needed, the SVG names a font family and the viewer renders it). A wall-time bar is the median
//! and carries a min–max whisker: the spread the verdict judges differences by.

use std::path::Path;

use plotters::prelude::*;

use super::Comparison;
use crate::baseline::Error;

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

pub fn draw(path: &Path, comparison: &Comparison) -> Result<(), Error> {
    let failed = |error: String| Error::Chart {
        path: path.to_path_buf(),
        message: error,
    };
    let ran: Vec<_> = comparison
        .executors
        .iter()
        .filter(|r| r.unavailable.is_none())
        .collect();
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(e.to_string()))?;
    let title = format!("{} items, median of {} runs", comparison.items, comparison.repeat);
    let root = root
        .titled(&title, ("sans-serif", 18))
        .map_err(|e| failed(e.to_string()))?;
    let panels = root.split_evenly((1, 2));
    // Caption, unit, the bar's value, and the whisker's (min, max) where runs spread.
    type Metric<'a> = (
        &'a str,
        &'a str,
        Box<dyn Fn(usize) -> f64 + 'a>,
        Option<Box<dyn Fn(usize) -> (f64, f64) + 'a>>,
    );
    let metrics: [Metric<'_>; 2] = [
        (
            "wall time",
            "seconds",
            Box::new(|i| ran[i].wall_median_s),
            Some(Box::new(|i| (ran[i].wall_min_s, ran[i].wall_max_s))),
        ),
        (
            "peak memory (PSS)",
            "MiB",
            Box::new(|i| ran[i].peak_pss_bytes as f64 / (1 << 20) as f64),
            None,
        ),
    ];
    for (panel, (caption, unit, value, spread)) in panels.iter().zip(metrics.iter()) {
        let highest = |i| spread.as_ref().map_or(value(i), |spread| spread(i).1.max(value(i)));
        let top = (0..ran.len()).map(highest).fold(0.0f64, f64::max).max(1e-9) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(*caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((0..ran.len().saturating_sub(1)).into_segmented(), 0.0..top)
            .map_err(|e| failed(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(*unit)
            .x_labels(ran.len())
            .x_label_formatter(&|segment| match segment {
                SegmentValue::CenterOf(i) => ran.get(*i).map_or(String::new(), |r| r.executor.clone()),
                _ => String::new(),
            })
            .draw()
            .map_err(|e| failed(e.to_string()))?;
        for (i, report) in ran.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(color.filled())
                        .margin(14)
                        .data([(i, value(i))]),
                )
                .map_err(|e| failed(e.to_string()))?
                .label(report.executor.clone());
            if let Some(spread) = spread {
                let (low, high) = spread(i);
                chart
                    .draw_series([ErrorBar::new_vertical(
                        SegmentValue::CenterOf(i),
                        low,
                        value(i),
                        high,
                        BLACK.stroke_width(2),
                        12,
                    )])
                    .map_err(|e| failed(e.to_string()))?;
            }
        }
    }
    root.present().map_err(|e| failed(e.to_string()))?;
    Ok(())
}
