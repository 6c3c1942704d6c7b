//! The burst timeline: one sample per second of queue depth (SQS), desired replicas (pool
//! status) and ready replicas (Deployment), written as CSV and drawn as a PNG.

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the burst started.
    pub t: f64,
    pub visible: u64,
    pub in_flight: u64,
    pub desired: i32,
    pub ready: i32,
}

/// How to read a pod count from a sample.
type PodCount = fn(&Sample) -> f64;

/// A named, coloured line and how to read its value from a sample.
type Line = (&'static str, RGBColor, fn(&Sample) -> f64);

pub const CSV_HEADER: &str = "t_seconds,visible,in_flight,desired,ready";

pub fn to_csv(samples: &[Sample]) -> String {
    let mut csv = format!("{CSV_HEADER}\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{}",
            s.t, s.visible, s.in_flight, s.desired, s.ready
        );
    }
    csv
}

/// Fonts tried for the labels, first found wins (`E2E_FONT` overrides).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a font for plotters once; false when none is found (the plot is drawn without
/// text then).
fn font_available() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let candidates = std::env::var("E2E_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|p| p.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps a &'static reference; one font per process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws visible, in flight (left axis, messages) and desired, ready (right axis, pods).
pub fn render_png(samples: &[Sample], title: &str, path: &Path) -> Result<(), String> {
    let with_text = font_available();
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let t_max = samples.iter().map(|s| s.t).fold(1.0, f64::max);
    let messages_max = samples
        .iter()
        .map(|s| s.visible.max(s.in_flight))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let pods_max = samples
        .iter()
        .map(|s| s.desired.max(s.ready))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        + 1.0;

    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if with_text {
        builder
            .caption(title, ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(75)
            .right_y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..t_max, 0.0..messages_max)
        .map_err(|e| e.to_string())?
        .set_secondary_coord(0.0..t_max, 0.0..pods_max);
    if with_text {
        chart
            .configure_mesh()
            .x_desc("seconds since the burst started")
            .y_desc("messages (left) / pods (right)")
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .configure_secondary_axes()
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(|e| e.to_string())?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(|e| e.to_string())?;
    }

    let series: [Line; 2] = [
        ("visible", BLUE, |s| s.visible as f64),
        ("in flight", RGBColor(0, 150, 200), |s| s.in_flight as f64),
    ];
    for (name, color, value) in series {
        let drawn = chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.t, value(s))),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        if with_text {
            drawn.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    let pods: [Line; 2] = [
        ("desired pods", RED, |s| f64::from(s.desired)),
        ("ready pods", RGBColor(0, 160, 0), |s| f64::from(s.ready)),
    ];
    for (name, color, value) in pods {
        let drawn = chart
            .draw_secondary_series(LineSeries::new(
                samples.iter().map(|s| (s.t, value(s))),
                color.stroke_width(3),
            ))
            .map_err(|e| e.to_string())?;
        if with_text {
            drawn.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        }
    }
    if with_text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// One scaler's timeline, drawn beside others by [`render_lanes_png`].
pub struct Lane<'a> {
    pub name: &'a str,
    pub samples: &'a [Sample],
}

const LANE_COLORS: [RGBColor; 4] = [
    RGBColor(0, 110, 220),
    RGBColor(220, 60, 0),
    RGBColor(130, 0, 170),
    RGBColor(0, 150, 70),
];

type Panel<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One panel of [`render_lanes_png`]: time on x, `y_desc` from 0 to `y_max`.
fn panel<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    t_max: f64,
    y_max: f64,
    y_desc: &str,
    with_text: bool,
) -> Result<Panel<'a, 'b>, String> {
    let mut builder = ChartBuilder::on(area);
    builder.margin(15);
    if with_text {
        builder.x_label_area_size(40).y_label_area_size(75);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    let mut mesh = chart.configure_mesh();
    if with_text {
        mesh.x_desc("seconds since the first arrival")
            .y_desc(y_desc)
            .label_style(("sans-serif", 15));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    Ok(chart)
}

/// Several scalers on one time axis: backlog (visible + in flight) per lane on top, desired
/// (thin) and ready (thick) pods per lane below, one colour per lane.
pub fn render_lanes_png(lanes: &[Lane], title: &str, path: &Path) -> Result<(), String> {
    let with_text = font_available();
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = if with_text {
        root.titled(title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?
    } else {
        root
    };
    let (top, bottom) = root.split_vertically(400);
    let all = || lanes.iter().flat_map(|l| l.samples.iter());
    let t_max = all().map(|s| s.t).fold(1.0, f64::max);
    let backlog_max = all()
        .map(|s| s.visible + s.in_flight)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let pods_max = all()
        .map(|s| s.desired.max(s.ready))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        + 1.0;
    let mut chart = panel(
        &top,
        t_max,
        backlog_max,
        "backlog (visible + in flight)",
        with_text,
    )?;
    for (i, lane) in lanes.iter().enumerate() {
        let color = LANE_COLORS[i % LANE_COLORS.len()];
        let drawn = chart
            .draw_series(LineSeries::new(
                lane.samples
                    .iter()
                    .map(|s| (s.t, (s.visible + s.in_flight) as f64)),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        if with_text {
            drawn.label(lane.name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    if with_text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| e.to_string())?;
    }

    let mut chart = panel(
        &bottom,
        t_max,
        pods_max,
        "pods: desired (thin), ready (thick)",
        with_text,
    )?;
    for (i, lane) in lanes.iter().enumerate() {
        let color = LANE_COLORS[i % LANE_COLORS.len()];
        let series: [(PodCount, u32); 2] =
            [(|s| f64::from(s.desired), 1), (|s| f64::from(s.ready), 3)];
        for (value, width) in series {
            chart
                .draw_series(LineSeries::new(
                    lane.samples.iter().map(|s| (s.t, value(s))),
                    color.stroke_width(width),
                ))
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Sample> {
        vec![
            Sample {
                t: 0.0,
                visible: 500,
                in_flight: 0,
                desired: 0,
                ready: 0,
            },
            Sample {
                t: 1.0,
                visible: 480,
                in_flight: 20,
                desired: 8,
                ready: 2,
            },
            Sample {
                t: 2.5,
                visible: 0,
                in_flight: 0,
                desired: 0,
                ready: 0,
            },
        ]
    }

    #[test]
    fn csv_has_a_header_and_one_row_per_sample() {
        let csv = to_csv(&samples());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[2], "1.0,480,20,8,2");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn png_is_written() {
        let dir = std::env::temp_dir().join(format!("qwp-e2e-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.png");
        render_png(&samples(), "test", &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lanes_png_is_written() {
        let dir = std::env::temp_dir().join(format!("qwp-e2e-lanes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lanes.png");
        let (a, b) = (samples(), samples()[1..].to_vec());
        let lanes = [
            Lane {
                name: "a",
                samples: &a,
            },
            Lane {
                name: "b",
                samples: &b,
            },
        ];
        render_lanes_png(&lanes, "test", &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
