//! What a run reports: a human table, a JSON document, an SVG of latency over time.

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
        if self.failures.is_empty() {
            println!("  correctness: every result checked, none wrong, none lost");
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

    /// Write an SVG of latency over time.
    pub fn write_plot(&self, path: &Path) -> anyhow::Result<()> {
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
