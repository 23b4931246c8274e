//! The latency plot: a percentile spectrum (latency against percentile on a log scale, so the
//! tail gets as much room as the median), as SVG, drawn with `plotters`.

use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

/// The x coordinate of a percentile: `-log10(1 - p)`, so 90% is 1, 99% is 2, 99.9% is 3.
fn x_of(quantile: f64) -> f64 {
    -(1.0 - quantile).max(1e-6).log10()
}

/// Points of the spectrum, from the median to the largest value.
fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    let mut x = 0.0;
    while x <= 5.0 {
        let quantile = 1.0 - 10f64.powf(-x);
        points.push((x, h.value_at_quantile(quantile) as f64 / 1_000.0));
        x += 0.02;
    }
    points
}

/// Writes the spectra of `series` (name, histogram of microseconds) to `path`.
pub fn write_svg(path: &Path, title: &str, series: &[(&str, &Histogram<u64>)]) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let top = series.iter().map(|(_, h)| h.max() as f64 / 1_000.0).fold(1.0, f64::max) * 1.1;
    let max_x = series.iter().map(|(_, h)| if h.len() >= 1_000 { 3.0 } else { 2.0 }).fold(2.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_of(0.0)..max_x, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(max_x as usize + 1)
        .x_label_formatter(&|x| {
            let percent = format!("{:.3}", 100.0 * (1.0 - 10f64.powf(-x)));
            format!("{}%", percent.trim_end_matches('0').trim_end_matches('.'))
        })
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];
    for (i, (name, histogram)) in series.iter().enumerate() {
        if histogram.is_empty() {
            continue;
        }
        let color = colors[i % colors.len()];
        let points: Vec<(f64, f64)> = spectrum(histogram).into_iter().filter(|(x, _)| *x <= max_x).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_is_an_svg_with_both_series() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=5_000u64 {
            h.record(us).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.svg");
        write_svg(&path, "test", &[("API ack", &h), ("end to end", &h)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("API ack") && svg.contains("end to end"));
        assert!(svg.contains("99%"), "percentile labels");
    }
}
