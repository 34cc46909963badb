//! The report's line plots (validation perplexity against tokens or FLOPs), drawn once with
//! plotters and written as SVG and PNG. Text uses the embedded DejaVu Sans, so a plot looks
//! the same on every machine.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use crate::{ExperimentError, write};

/// DejaVu Sans 2.37 (Bitstream Vera license: `assets/DejaVuSans.LICENSE`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 560);
const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// One line of a plot: every point is drawn as a marker on the line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// Perplexity (log y) against tokens or FLOPs; x is logarithmic when every x is positive and
/// the points span more than a decade (early points would otherwise sit on the axis).
#[derive(Debug, Clone)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
    /// A horizontal reference line (the baseline's final perplexity).
    pub target: Option<f64>,
}

impl Plot {
    /// Write `<stem>.svg` and `<stem>.png` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), ExperimentError> {
        let svg_path = dir.join(format!("{stem}.svg"));
        write(&svg_path, self.svg().map_err(|m| plot_error(&svg_path, m))?)?;
        let png_path = dir.join(format!("{stem}.png"));
        write(&png_path, self.png().map_err(|m| plot_error(&png_path, m))?)?;
        Ok(())
    }

    /// The plot as an SVG document.
    pub fn svg(&self) -> Result<String, String> {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    /// The plot as a PNG file's bytes.
    pub fn png(&self) -> Result<Vec<u8>, String> {
        let (w, h) = SIZE;
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| e.to_string())?;
        }
        let mut png = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut png),
            &rgb,
            w,
            h,
            image::ColorType::Rgb8,
        )
        .map_err(|e| e.to_string())?;
        Ok(png)
    }

    /// The points that can be drawn, of every series.
    fn finite(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(drawable)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        register_font();
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(err)?;
        let mut ys: Vec<f64> = self.finite().map(|p| p.1).collect();
        ys.extend(self.target);
        let (ymin, ymax) = ys
            .iter()
            .fold((f64::INFINITY, 0f64), |(a, b), &y| (a.min(y), b.max(y)));
        let (ymin, ymax) = if ymin.is_finite() {
            (ymin / 1.1, ymax * 1.1)
        } else {
            (1.0, 10.0)
        };
        let xs: Vec<f64> = self.finite().map(|p| p.0).collect();
        let xmax = xs.iter().copied().fold(0.0, f64::max).max(1.0);
        let xmin_pos = xs
            .iter()
            .copied()
            .filter(|x| *x > 0.0)
            .fold(f64::INFINITY, f64::min);
        let log_x = xs.iter().all(|x| *x > 0.0) && xmin_pos.is_finite() && xmax / xmin_pos > 10.0;
        let mut builder = ChartBuilder::on(root);
        builder
            .caption(&self.title, (FAMILY, 20).into_font())
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64);
        let y = (ymin..ymax).log_scale();
        if log_x {
            let x = (xmin_pos / 1.2, xmax * 1.2);
            let mut chart = builder
                .build_cartesian_2d((x.0..x.1).log_scale(), y)
                .map_err(err)?;
            let desc = format!("{} (log scale)", self.x_label);
            self.fill(&mut chart, desc, x).map_err(err)
        } else {
            let x = (0.0, xmax * 1.02);
            let mut chart = builder.build_cartesian_2d(x.0..x.1, y).map_err(err)?;
            self.fill(&mut chart, self.x_label.clone(), x).map_err(err)
        }
    }

    /// Axes, the series over `x0..x1` and the legend, on a linear or a log x axis.
    fn fill<'a, DB, X, Y>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
        x_desc: String,
        (x0, x1): (f64, f64),
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB: DrawingBackend + 'a,
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let label = (FAMILY, 14).into_font();
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("validation perplexity (log scale)")
            .label_style(label.clone())
            .x_label_formatter(&|x| si(*x))
            .y_label_formatter(&|y| tick(*y))
            .draw()?;
        self.draw_series(chart, x0, x1)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(label)
            .draw()
    }

    fn draw_series<'a, DB, X, Y>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
        x0: f64,
        x1: f64,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB: DrawingBackend + 'a,
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        if let Some(t) = self.target {
            let grey = RGBColor(0x55, 0x55, 0x55);
            chart
                .draw_series(DashedLineSeries::new([(x0, t), (x1, t)], 3, 4, grey.into()))?
                .label(format!("baseline final {t:.1}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], grey));
        }
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let style = color.stroke_width(2);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| drawable(p) && p.0 >= x0)
                .collect();
            let anno = if s.dashed {
                chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))?
            } else {
                chart.draw_series(LineSeries::new(pts.clone(), style))?
            };
            anno.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2))
            });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        Ok(())
    }
}

/// A finite point with positive y (perplexity, on a log axis).
fn drawable(&(x, y): &(f64, f64)) -> bool {
    x.is_finite() && y.is_finite() && y > 0.0
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans is a valid font"));
    });
}

fn plot_error(path: &Path, message: String) -> ExperimentError {
    ExperimentError::Plot {
        path: path.to_path_buf(),
        message,
    }
}

/// 1.2M, 350k, 4.1e12-style axis labels.
fn si(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e12 {
        format!("{x:.1e}")
    } else if a >= 1e9 {
        format!("{:.1}G", x / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if a >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Perplexity ticks: integers from 10 up, two significant digits below.
fn tick(y: f64) -> String {
    if y >= 10.0 {
        format!("{y:.0}")
    } else {
        format!("{y:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot(xs: &[f64]) -> Plot {
        Plot {
            title: "t".into(),
            x_label: "tokens".into(),
            series: vec![
                Series {
                    name: "ce".into(),
                    dashed: false,
                    points: xs.iter().map(|&x| (x, 800.0 / (1.0 + x / 1e4))).collect(),
                },
                Series {
                    name: "kd <k=8> & tail".into(),
                    dashed: true,
                    points: xs.iter().map(|&x| (x, 700.0 / (1.0 + x / 5e3))).collect(),
                },
            ],
            target: Some(300.0),
        }
    }

    #[test]
    fn the_svg_has_every_series_every_point_and_escaped_names() {
        let xs = [0.0, 2e4, 4e4, 6e4, 1e5];
        let svg = plot(&xs).svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // two series and the baseline line (plus their legend samples)
        assert!(svg.matches("<polyline").count() >= 3, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 2 * xs.len());
        assert!(svg.contains("kd &lt;k=8&gt; &amp; tail"));
        assert!(svg.contains("baseline final 300.0"));
        assert!(!svg.contains("NaN"));
        // x from 0: linear axis
        assert!(!svg.contains("tokens (log scale)"));
    }

    #[test]
    fn positive_x_over_decades_gets_a_log_axis() {
        let svg = plot(&[1e3, 1e4, 1e5, 1e6]).svg().unwrap();
        assert!(svg.contains("tokens (log scale)"));
        assert!(svg.contains("\n1.0M\n"), "readable ticks: {svg}");
    }

    #[test]
    fn the_png_is_a_png_of_the_plot_size() {
        let png = plot(&[0.0, 5e4, 1e5]).png().unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!((img.width(), img.height()), SIZE);
        // not blank: the lines and text put non-white pixels in
        let rgb = img.to_rgb8();
        assert!(rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 5000);
    }
}
