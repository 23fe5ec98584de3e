//! The benchmark's plots, drawn with plotters to SVG (no fonts needed).

use plotters::prelude::*;
use std::path::Path;

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A line chart with points; `log_y` for latencies.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> anyhow::Result<()> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    anyhow::ensure!(!all.is_empty(), "nothing to plot for {title}");
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max) * 1.05;
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.3;
    let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).max(0.01) / 1.5;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 22)).margin(16).x_label_area_size(48).y_label_area_size(70);
    if log_y {
        let mut chart = builder.build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
        draw_series(&mut chart, series)?;
    } else {
        let mut chart = builder.build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
        draw_series(&mut chart, series)?;
    }
    root.present()?;
    Ok(())
}

fn draw_series<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}
