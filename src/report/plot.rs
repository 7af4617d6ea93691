//! The report's picture, drawn once for SVG and once for PNG by the same code: four line charts
//! (training loss, learning rate, validation accuracy, a second validation metric) with the runs
//! overlaid, the KD heatmap when there is one, and a grid of confusion matrices. Text is set in
//! DejaVu Sans, embedded in the binary (the `dejavu` crate) and read by `ab_glyph`: no system font
//! or library is needed.

use super::{metric, Heatmap, Run};
use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{SegmentValue, SegmentedCoord};
use plotters::coord::types::RangedCoordi32;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The axes of the heatmap and the matrices: cells `0..n`.
type Segments = SegmentedCoord<RangedCoordi32>;

const WIDTH: u32 = 1200;
const LINE_HEIGHT: u32 = 330;
const HEAT_HEIGHT: u32 = 400;
const MATRIX_COLUMNS: usize = 4;
const MATRIX_HEIGHT: u32 = 300;
const FONT: &str = "sans-serif";
/// The ends of the colour scale of the heatmap and the matrices.
const LIGHT: (u8, u8, u8) = (239, 243, 255);
const DARK: (u8, u8, u8) = (8, 69, 148);

/// The picture as an SVG document.
pub fn svg(runs: &[Run], heatmap: Option<&Heatmap>) -> Result<String> {
    register_font()?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size(runs, heatmap)).into_drawing_area();
        draw(&root, runs, heatmap)?;
        root.present().map_err(failed)?;
    }
    Ok(text)
}

/// The picture as PNG bytes (RGB, 8 bits).
pub fn png(runs: &[Run], heatmap: Option<&Heatmap>) -> Result<Vec<u8>> {
    register_font()?;
    let (w, h) = size(runs, heatmap);
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        draw(&root, runs, heatmap)?;
        root.present().map_err(failed)?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(&pixels).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(out)
}

/// Makes the embedded font the `sans-serif` of the drawings (once).
fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font cannot be read"))
    }
}

fn failed<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the report: {e:?}")
}

/// The runs that have a best checkpoint (and so a confusion matrix).
fn with_best(runs: &[Run]) -> Vec<&Run> {
    runs.iter().filter(|r| r.best().is_some_and(|b| !b.confusion.is_empty())).collect()
}

fn size(runs: &[Run], heatmap: Option<&Heatmap>) -> (u32, u32) {
    let matrix_rows = with_best(runs).len().div_ceil(MATRIX_COLUMNS) as u32;
    (WIDTH, 2 * LINE_HEIGHT + heatmap.map_or(0, |_| HEAT_HEIGHT) + matrix_rows * MATRIX_HEIGHT)
}

fn color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// The colour at `t` in [0, 1] between [`LIGHT`] and [`DARK`].
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(mix(LIGHT.0, DARK.0), mix(LIGHT.1, DARK.1), mix(LIGHT.2, DARK.2))
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[Run], heatmap: Option<&Heatmap>) -> Result<()> {
    root.fill(&WHITE).map_err(failed)?;
    let (lines, rest) = root.split_vertically(2 * LINE_HEIGHT);
    let panels = lines.split_evenly((2, 2));
    let train = |f: fn(&crate::runlog::TrainRecord) -> f64| {
        move |r: &Run| r.train.iter().map(|t| (t.step as f64, f(t))).collect::<Vec<_>>()
    };
    let eval = |name: &'static str| {
        move |r: &Run| r.evals.iter().filter_map(|e| metric(e, name).map(|v| (e.step as f64, v))).collect::<Vec<_>>()
    };
    line_chart(&panels[0], "training loss (mean since the epoch's start)", runs, train(|t| t.loss), (true, false))?;
    line_chart(&panels[1], "learning rate", runs, train(|t| t.lr), (false, false))?;
    line_chart(&panels[2], "validation accuracy", runs, eval("accuracy"), (false, true))?;
    let has = |name: &str| runs.iter().any(|r| r.evals.iter().any(|e| metric(e, name).is_some()));
    let second = ["f1", "macro_f1"].into_iter().find(|n| has(n)).unwrap_or("eval_loss");
    line_chart(&panels[3], &format!("validation {second}"), runs, eval(second), (false, true))?;
    let rest = match heatmap {
        Some(h) => {
            let (top, below) = rest.split_vertically(HEAT_HEIGHT);
            draw_heatmap(&top, h)?;
            below
        }
        None => rest,
    };
    let matrices = with_best(runs);
    if !matrices.is_empty() {
        let cells = rest.split_evenly((matrices.len().div_ceil(MATRIX_COLUMNS), MATRIX_COLUMNS));
        for (area, run) in cells.iter().zip(matrices) {
            draw_confusion(area, run)?;
        }
    }
    Ok(())
}

/// One chart with a line per run; `legend`: draw the runs' names; `points`: mark every value.
fn line_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    runs: &[Run],
    series: impl Fn(&Run) -> Vec<(f64, f64)>,
    (legend, points): (bool, bool),
) -> Result<()> {
    let data: Vec<Vec<(f64, f64)>> = runs.iter().map(series).collect();
    let all = || data.iter().flatten();
    if all().next().is_none() {
        area.titled(&format!("{title}: no values"), (FONT, 16)).map_err(failed)?;
        return Ok(());
    }
    let range = |vals: Vec<f64>| {
        let (lo, hi) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
        let pad = if hi - lo > 0.0 { (hi - lo) * 0.05 } else { lo.abs() * 0.05 + 1e-9 };
        (lo - pad, hi + pad)
    };
    let (x0, x1) = range(all().map(|p| p.0).collect());
    let (y0, y1) = range(all().map(|p| p.1).collect());
    let small = y1.abs().max(y0.abs()) < 0.01;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .light_line_style(RGBColor(238, 238, 238))
        .label_style((FONT, 12))
        .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-9 { format!("{v:.0}") } else { String::new() })
        .y_label_formatter(&|v| if small { format!("{v:.1e}") } else { format!("{v:.3}") })
        .draw()
        .map_err(failed)?;
    for (i, (run, pts)) in runs.iter().zip(&data).enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(failed)?
            .label(run.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        if points || pts.len() == 1 {
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(failed)?;
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(failed)?;
    }
    Ok(())
}

/// The label of a segment's centre from `names`.
fn segment_label(v: &SegmentValue<i32>, names: &[String]) -> String {
    match v {
        SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// A coloured cell with centred text, in segment coordinates.
fn cell<DB: DrawingBackend>(
    chart: &mut ChartContext<DB, Cartesian2d<Segments, Segments>>,
    (x, y): (i32, i32),
    t: f64,
    text: String,
) -> Result<()> {
    let rect = Rectangle::new(
        [(SegmentValue::Exact(x), SegmentValue::Exact(y)), (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1))],
        shade(t).filled(),
    );
    chart.draw_series(std::iter::once(rect)).map_err(failed)?;
    let ink = if t > 0.55 { WHITE } else { BLACK };
    let style = (FONT, 14).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
    chart
        .draw_series(std::iter::once(Text::new(text, (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)), style)))
        .map_err(failed)?;
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, h: &Heatmap) -> Result<()> {
    let title = match h.no_kd {
        Some(s) => format!("best validation accuracy by KD temperature and alpha (no KD: {})", s.text()),
        None => "best validation accuracy by KD temperature and alpha".to_string(),
    };
    let means: Vec<f64> = h.cells.iter().flatten().flatten().map(|s| s.mean).collect();
    let lo = means.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (nr, nc) = (h.temperatures.len() as i32, h.alphas.len() as i32);
    let temps: Vec<String> = h.temperatures.iter().map(|t| t.to_string()).collect();
    let alphas: Vec<String> = h.alphas.iter().map(|a| a.to_string()).collect();
    let mut chart = ChartBuilder::on(&area.margin(5, 5, 150, 150))
        .caption(title, (FONT, 18))
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0..nc - 1).into_segmented(), (0..nr - 1).into_segmented())
        .map_err(failed)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("alpha")
        .y_desc("temperature")
        .label_style((FONT, 14))
        .x_labels(nc as usize + 1)
        .y_labels(nr as usize + 1)
        .x_label_formatter(&|v| segment_label(v, &alphas))
        .y_label_formatter(&|v| segment_label(v, &temps))
        .draw()
        .map_err(failed)?;
    for (i, row) in h.cells.iter().enumerate() {
        for (j, c) in row.iter().enumerate() {
            if let Some(s) = c {
                let t = if hi > lo { (s.mean - lo) / (hi - lo) } else { 1.0 };
                cell(&mut chart, (j as i32, i as i32), t, s.text())?;
            }
        }
    }
    Ok(())
}

fn draw_confusion<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, run: &Run) -> Result<()> {
    let best = run.best().expect("only runs with a best evaluation");
    let n = best.confusion.len() as i32;
    let names: Vec<String> =
        (0..n as usize).map(|i| run.labels.get(i).cloned().unwrap_or_else(|| i.to_string())).collect();
    // Row k from the bottom is label n-1-k, so label 0 is on top.
    let rows: Vec<String> = names.iter().rev().cloned().collect();
    let caption =
        format!("{} (step {}, accuracy {:.4})", run.name, best.step, metric(best, "accuracy").unwrap_or(f64::NAN));
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption(caption, (FONT, 14))
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
        .map_err(failed)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("prediction")
        .y_desc("label")
        .label_style((FONT, 12))
        .x_labels(n as usize + 1)
        .y_labels(n as usize + 1)
        .x_label_formatter(&|v| segment_label(v, &names))
        .y_label_formatter(&|v| segment_label(v, &rows))
        .draw()
        .map_err(failed)?;
    for (label, row) in best.confusion.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        for (pred, count) in row.iter().enumerate() {
            cell(&mut chart, (pred as i32, n - 1 - label as i32), *count as f64 / total, count.to_string())?;
        }
    }
    Ok(())
}
