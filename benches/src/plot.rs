//! The Figure 3 plot: aggregate throughput against the number of clients,
//! with the limit line, one panel per benchmark (plotters, SVG).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::figure3::Figure3;

pub fn figure3_svg(f: &Figure3, path: &Path) -> Result<()> {
    let benches: Vec<&str> = ["read", "write", "append"]
        .into_iter()
        .filter(|b| f.results.iter().any(|p| p.bench == *b))
        .collect();
    if benches.is_empty() {
        return Err(anyhow!("nothing to plot"));
    }
    let root = SVGBackend::new(path, (420 * benches.len() as u32, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((1, benches.len()));
    for ((panel, bench), letter) in panels.iter().zip(&benches).zip('a'..) {
        // The paper's captions.
        let title = match *bench {
            "read" => "Reads",
            "write" => "Writes",
            _ => "Record appends",
        };
        let pts: Vec<_> = f.results.iter().filter(|p| p.bench == *bench).collect();
        let max_n = pts.iter().map(|p| p.clients).max().unwrap_or(1) as f64;
        let top = pts
            .iter()
            .map(|p| {
                p.mb_s
                    .max(p.limit_mb_s)
                    .max(p.cpu_limit_mb_s.unwrap_or(0.0))
            })
            .fold(1.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("({letter}) {title}"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_n * 1.05, 0.0..top)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("Number of clients N")
            .y_desc("Aggregate MB/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.clients as f64, p.limit_mb_s)),
                BLACK.stroke_width(1),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label("limit (measured ceilings)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        // A cluster on this host: what its CPUs allow (figure3's module
        // comment).
        let cpu: Option<Vec<(f64, f64)>> = pts
            .iter()
            .map(|p| p.cpu_limit_mb_s.map(|l| (p.clients as f64, l)))
            .collect();
        if let Some(cpu) = cpu {
            let grey = RGBColor(150, 150, 150);
            chart
                .draw_series(LineSeries::new(cpu, grey.stroke_width(1)))
                .map_err(|e| anyhow!("{e}"))?
                .label("CPU limit (cores shared)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], grey));
        }
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.clients as f64, p.mb_s)),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label("gfs-rs")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.clients as f64, p.mb_s), 3, BLUE.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
