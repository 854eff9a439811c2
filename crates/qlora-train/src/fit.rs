//! [`Trainer::fit`]: a whole run, with the policy every caller would otherwise repeat: the
//! held-out loss before the first step, evaluation and checkpoints at a cadence and after the
//! last step, `metrics.jsonl` written with every checkpoint, and a device failure returned as
//! an error (with the step it struck) instead of a panic. Under several processes
//! ([`Trainer::set_collective`]) rank 0 alone writes files. Progress is reported through
//! [`FitEvent`]s, so that a progress bar, a logger or a dashboard sits outside the loop, as in
//! burn-train's `Learner` and its event processors.

use std::path::{Path, PathBuf};

use qlora_nn::CausalLm;

use crate::checkpoint::checkpoint_step;
use crate::{StepRecord, TrainError, Trainer, write_metrics};

/// How [`Trainer::fit`] evaluates and saves.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Evaluate on the held-out samples every this many steps, and after the last.
    pub eval_every: usize,
    /// Write a checkpoint (and `metrics.jsonl`) every this many steps, and after the last.
    pub save_every: usize,
    /// The run's output folder for checkpoints and `metrics.jsonl`; none: nothing is written.
    pub out: Option<PathBuf>,
}

impl Default for FitOptions {
    /// Every 10 steps, nothing written.
    fn default() -> Self {
        Self {
            eval_every: 10,
            save_every: 10,
            out: None,
        }
    }
}

impl FitOptions {
    /// Checkpoints and metrics written into `out`, evaluation and saves every 10 steps.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: Some(out.into()),
            ..Self::default()
        }
    }

    /// Evaluates every `n` steps.
    pub fn with_eval_every(mut self, n: usize) -> Self {
        self.eval_every = n;
        self
    }

    /// Saves every `n` steps.
    pub fn with_save_every(mut self, n: usize) -> Self {
        self.save_every = n;
        self
    }
}

/// What [`Trainer::fit`] reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FitEvent<'a> {
    /// The held-out loss before the first step (a run that starts at step 0 with held-out
    /// samples).
    InitialEval {
        /// Mean loss per trained token.
        loss: f64,
    },
    /// An optimizer step is done.
    Step(&'a StepRecord),
    /// The held-out loss after a step.
    Eval {
        /// The step.
        step: usize,
        /// Mean loss per trained token.
        loss: f64,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The step.
        step: usize,
        /// Its folder.
        path: &'a Path,
    },
}

/// What a finished [`Trainer::fit`] did, counted over the whole run (steps before a resume
/// included).
#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    /// Optimizer steps done.
    pub steps: usize,
    /// Tokens trained on (padding excluded).
    pub tokens: usize,
    /// Seconds spent in steps (evaluation and saving excluded).
    pub seconds: f64,
    /// Held-out loss before the first step.
    pub initial_eval_loss: Option<f64>,
    /// Held-out loss after the last step.
    pub final_eval_loss: Option<f64>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
}

impl FitSummary {
    /// Tokens per second over the steps.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

impl<M: CausalLm> Trainer<M> {
    /// Trains until every step of the config is done, from wherever the trainer is (a fresh
    /// run, or one restored with [`Trainer::resume`]); see the module docs.
    ///
    /// Errors: a cadence of 0 ([`TrainError::Setting`], before any work); a step or evaluation
    /// that failed on the device ([`TrainError::Step`], [`TrainError::Eval`]); a checkpoint or
    /// metrics file that could not be written. Checkpoints already written stay whole, so the
    /// run can resume from the last one; a `fit` called again after an evaluation or a save
    /// failed does the evaluation and the save of the last step it missed.
    pub fn fit(
        &mut self,
        options: &FitOptions,
        mut on_event: impl FnMut(FitEvent<'_>),
    ) -> Result<FitSummary, TrainError> {
        for (name, n) in [
            ("eval_every", options.eval_every),
            ("save_every", options.save_every),
        ] {
            if n == 0 {
                return Err(TrainError::Setting {
                    name: name.into(),
                    problem: "must be at least 1".into(),
                });
            }
        }
        // Processes that would not run the same run (another checkpoint, other cadences) stop
        // here with a named error, before they make different collective calls.
        if self.collective.size() > 1 {
            self.ranks_agree_with(&[
                options.eval_every as u64,
                options.save_every as u64,
                u64::from(options.out.is_some()),
            ])?;
        }
        if self.state.step == 0
            && self.state.initial_eval_loss.is_none()
            && let Some(loss) = self.eval_loss()?
        {
            self.state.initial_eval_loss = Some(loss);
            on_event(FitEvent::InitialEval { loss });
        }
        let mut checkpoint = None;
        let mut saved_at = None;
        while !self.is_done() {
            let record = self.step()?;
            on_event(FitEvent::Step(&record));
            let step = record.step;
            if (step % options.eval_every == 0 || self.is_done())
                && let Some(loss) = self.eval_loss()?
            {
                self.record_eval(loss);
                on_event(FitEvent::Eval { step, loss });
            }
            if let Some(out) = &options.out
                && (step % options.save_every == 0 || self.is_done())
            {
                // Under several processes: every one checks that they still hold one model,
                // and rank 0 alone writes.
                if self.collective.size() > 1 {
                    self.ranks_agree()?;
                }
                if self.is_main_process() {
                    let path = self.save_checkpoint(out)?;
                    self.write_metrics(out)?;
                    on_event(FitEvent::Checkpoint { step, path: &path });
                    checkpoint = Some(path);
                    saved_at = Some(step);
                }
            }
        }
        // The last step's evaluation and save, where an earlier call failed before them.
        let step = self.state.step;
        if self
            .state
            .history
            .last()
            .is_some_and(|r| r.eval_loss.is_none())
            && let Some(loss) = self.eval_loss()?
        {
            self.record_eval(loss);
            on_event(FitEvent::Eval { step, loss });
        }
        if let Some(out) = &options.out
            && self.is_main_process()
        {
            // Saved by this call, or found whole on disk (a run resumed after its last step).
            let saved = saved_at == Some(step) || checkpoint_step(out) == Some(step);
            if step > 0 && !saved {
                let path = self.save_checkpoint(out)?;
                on_event(FitEvent::Checkpoint { step, path: &path });
                checkpoint = Some(path);
            }
            self.write_metrics(out)?;
        }
        let history = &self.state.history;
        Ok(FitSummary {
            steps: self.state.step,
            tokens: history.iter().map(|r| r.tokens).sum(),
            seconds: history.iter().map(|r| r.seconds).sum(),
            initial_eval_loss: self.state.initial_eval_loss,
            final_eval_loss: history.iter().rev().find_map(|r| r.eval_loss),
            checkpoint,
        })
    }

    fn write_metrics(&self, out: &Path) -> Result<(), TrainError> {
        write_metrics(
            &out.join("metrics.jsonl"),
            &self.state.history,
            self.state.initial_eval_loss,
        )
    }
}

/// Optimizer steps for `epochs` passes over `samples` training samples, `batch_size` ×
/// `grad_accum` per step (the last step of a pass may be short): at least 1.
pub fn steps_for_epochs(
    samples: usize,
    batch_size: usize,
    grad_accum: usize,
    epochs: f64,
) -> usize {
    let per_epoch = samples.div_ceil((batch_size * grad_accum).max(1));
    ((per_epoch as f64) * epochs).ceil().max(1.0) as usize
}
