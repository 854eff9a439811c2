//! The run's figures: a JSONL file (one step a line) and a PNG of the loss curves.

use std::path::Path;

use plotters::prelude::*;

use crate::{StepRecord, TrainError};

/// Writes `history` as JSON lines to `path` (through a temporary file and a rename), after a
/// line `{"step": 0, "eval_loss": ..}` for the held-out loss before training when there is one.
pub fn write_metrics(
    path: &Path,
    history: &[StepRecord],
    initial_eval: Option<f64>,
) -> Result<(), TrainError> {
    let mut text = String::new();
    if let Some(l) = initial_eval {
        // Step 0: the held-out loss before training, as the plot and the printout show it.
        text.push_str(&serde_json::json!({"step": 0, "eval_loss": l}).to_string());
        text.push('\n');
    }
    for r in history {
        text.push_str(&serde_json::to_string(r).expect("record JSON"));
        text.push('\n');
    }
    qlora_nn::write_atomic(path, text.as_bytes())?;
    Ok(())
}

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is a valid TTF bundled with the crate; failing here is a build defect.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws training loss (per step) and held-out loss (where evaluated) to a PNG.
/// `initial_eval` is the held-out loss before training (drawn at step 0).
pub fn plot_losses(
    path: &Path,
    history: &[StepRecord],
    initial_eval: Option<f64>,
) -> Result<(), TrainError> {
    register_font();
    let fail = |e: String| TrainError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e),
    };
    if history.is_empty() {
        return Ok(());
    }
    let train: Vec<(f64, f64)> = history.iter().map(|r| (r.step as f64, r.loss)).collect();
    let eval: Vec<(f64, f64)> = initial_eval
        .map(|l| (0.0, l))
        .into_iter()
        .chain(
            history
                .iter()
                .filter_map(|r| r.eval_loss.map(|l| (r.step as f64, l))),
        )
        .collect();
    let all = train.iter().chain(&eval).map(|p| p.1);
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let last = history.last().map_or(1, |r| r.step) as f64;
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("QLoRA fine-tuning loss", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..last.max(1.0), (lo - pad)..(hi + pad))
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (nats/token)")
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(train, &BLUE))
        .map_err(|e| fail(e.to_string()))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval.clone(), RED.stroke_width(2)))
            .map_err(|e| fail(e.to_string()))?
            .label("held-out")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
        chart
            .draw_series(eval.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .map_err(|e| fail(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}
