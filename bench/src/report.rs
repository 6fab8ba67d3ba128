//! What a run reports: a human table, a JSON document, an SVG of latency over time (or of the
//! scenario's own charts).

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;
use serde_json::Value;

/// A progress bar on stderr for a long run (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(what.to_owned());
    bar
}

/// One scenario's results.
#[derive(Serialize, Debug)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Cores on this machine.
    pub machine_cores: usize,
    /// The scenario's configuration.
    pub config: Value,
    /// Every figure, by name.
    pub figures: serde_json::Map<String, Value>,
    /// Correctness failures (wrong results, lost jobs); empty when the run passed.
    pub failures: Vec<String>,
    /// (seconds since start, latency ms) samples for the plot.
    #[serde(skip)]
    pub series: Vec<(f64, f64)>,
    /// Results too detailed for the list of figures (`text` shows them): in the JSON only.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub detail: Value,
    /// Lines printed after the figures: a table, verdicts.
    #[serde(skip)]
    pub text: Vec<String>,
    /// Charts the SVG shows instead of latency over time, stacked.
    #[serde(skip)]
    pub charts: Vec<Chart>,
    /// What a run without failures showed, for the last printed line.
    #[serde(skip)]
    pub checked: String,
}

/// A line chart: one line per named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Its caption.
    pub title: String,
    /// The x axis's label.
    pub x_desc: String,
    /// The y axis's label.
    pub y_desc: String,
    /// (name, points in order of x).
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

impl Report {
    /// An empty report for `scenario` with `config`.
    pub fn new(scenario: &str, config: Value) -> Self {
        Report {
            scenario: scenario.to_owned(),
            machine_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            config,
            figures: serde_json::Map::new(),
            failures: Vec::new(),
            series: Vec::new(),
            detail: Value::Null,
            text: Vec::new(),
            charts: Vec::new(),
            checked: "every result checked, none wrong, none lost".to_owned(),
        }
    }

    /// Record a figure.
    pub fn figure(&mut self, name: &str, value: impl Serialize) {
        self.figures.insert(name.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// Print the human table.
    pub fn print(&self) {
        println!("\n{} ({} cores)", self.scenario, self.machine_cores);
        println!("  config: {}", self.config);
        let width = self.figures.keys().map(String::len).max().unwrap_or(0);
        for (name, value) in &self.figures {
            let shown = match value {
                Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or_default()),
                other => other.to_string(),
            };
            println!("  {name:<width$}  {shown}");
        }
        for line in &self.text {
            println!("  {line}");
        }
        if self.failures.is_empty() {
            println!("  correctness: {}", self.checked);
        } else {
            for failure in self.failures.iter().take(20) {
                println!("  FAILURE: {failure}");
            }
        }
    }

    /// Write the JSON report.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// Write an SVG of latency over time, or of the scenario's charts if it has any.
    pub fn write_plot(&self, path: &Path) -> anyhow::Result<()> {
        if !self.charts.is_empty() {
            return write_charts(&self.charts, path);
        }
        let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let max_t = self.series.iter().map(|s| s.0).fold(1.0, f64::max);
        let max_l = self.series.iter().map(|s| s.1).fold(1.0, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{}: latency over time", self.scenario), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_t, 0.0..max_l)?;
        chart.configure_mesh().x_desc("seconds since start").y_desc("latency (ms)").draw()?;
        chart.draw_series(self.series.iter().map(|(t, l)| Circle::new((*t, *l), 1, BLUE.filled())))?;
        root.present()?;
        Ok(())
    }
}

/// Colours of a chart's first lines, told apart easily; later lines take the palette's.
const LINE_COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

/// Write `charts` stacked in one SVG, each line in its own colour with a legend.
fn write_charts(charts: &[Chart], path: &Path) -> anyhow::Result<()> {
    const PANEL_HEIGHT: u32 = 320;
    let root = SVGBackend::new(path, (1000, PANEL_HEIGHT * charts.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for (chart, area) in charts.iter().zip(root.split_evenly((charts.len(), 1))) {
        let points = || chart.lines.iter().flat_map(|(_, points)| points.iter());
        let max_x = points().map(|p| p.0).fold(1.0, f64::max);
        let max_y = points().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let mut context = ChartBuilder::on(&area)
            .caption(&chart.title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
        context.configure_mesh().x_desc(chart.x_desc.as_str()).y_desc(chart.y_desc.as_str()).draw()?;
        for (index, (name, points)) in chart.lines.iter().enumerate() {
            let colour = LINE_COLOURS.get(index).map_or_else(|| Palette99::pick(index).to_rgba(), |c| c.to_rgba());
            context
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        context.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}
