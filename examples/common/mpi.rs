//! The MPI job a program may have been started in (`mpirun -np N`, `srun`): one process per
//! device, data parallel through [`burn_qlora::train::Collective`] (issue #37).
//!
//! Built with `--features mpi`, a program finds the job itself from the launcher's environment;
//! started without a launcher it is one process and MPI is never initialized. Built without the
//! feature, a launch of several processes is refused: each would train alone and write the same
//! files. So is an `srun` of several tasks that set no MPI environment (no PMI plugin).

use std::path::Path;
use std::sync::Arc;

use burn_qlora::nn::CausalLm;
use burn_qlora::train::{Collective, SingleProcess, TrainError, Trainer, find_checkpoint};

/// The job: the collective, and this process's place in it for messages.
#[derive(Clone)]
pub struct Job {
    pub collective: Arc<dyn Collective>,
    /// The host's name (MPI's processor name), or empty for one process.
    pub host: String,
}

impl Job {
    /// The job this process belongs to (one process when no launcher started it).
    pub fn start() -> Result<Self, String> {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = burn_qlora::train::MpiCollective::from_launcher()? {
            let host = mpi.host();
            let job = Self {
                collective: Arc::new(mpi),
                host,
            };
            if job.size() > 1 {
                one_write(&format!(
                    "mpi: rank {} of {} on {} (pid {})\n",
                    job.rank(),
                    job.size(),
                    job.host,
                    std::process::id()
                ));
                if job.rank() > 0 {
                    quiet_stdout();
                }
            }
            return Ok(job);
        }
        #[cfg(not(feature = "mpi"))]
        for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
            if let Some(n) = env_count(var) {
                return Err(format!(
                    "started by an MPI launcher as one of {n} processes ({var}={n}), but this \
                     binary was built without MPI: rebuild with `--features mpi`"
                ));
            }
        }
        if let Some(n) = env_count("SLURM_STEP_NUM_TASKS") {
            return Err(format!(
                "started by srun as one of {n} tasks, but no MPI environment reached this \
                 process: run `srun --mpi=pmix` (or pmi2) with a binary built with `--features \
                 mpi`; each task would otherwise train alone and write the same files"
            ));
        }
        Ok(Self {
            collective: Arc::new(SingleProcess),
            host: String::new(),
        })
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    pub fn size(&self) -> usize {
        self.collective.size()
    }

    /// `rank R of N (host, pid P)` under several processes, for messages; empty alone.
    pub fn who(&self) -> String {
        if self.size() > 1 {
            format!(
                "rank {} of {} ({}, pid {})",
                self.rank(),
                self.size(),
                self.host,
                std::process::id()
            )
        } else {
            String::new()
        }
    }

    /// `--device` for this process: under several processes an unindexed `cuda` (or `auto` in
    /// a CUDA build) is the GPU of this rank's index on its node (`cuda:{local rank}`), so that
    /// the ranks of a node do not share GPU 0. Other names are taken as given.
    pub fn device_name(&self, name: &str) -> String {
        let cuda = name == "cuda" || (name == "auto" && cfg!(feature = "cuda"));
        match (self.size() > 1, cuda, local_rank()) {
            (true, true, Some(local)) => format!("cuda:{local}"),
            _ => name.to_string(),
        }
    }

    /// Prints `error` naming this rank and ends every process of the job; alone, prints it and
    /// exits with 1.
    pub fn fail(&self, error: &dyn std::fmt::Display) -> ! {
        if self.size() > 1 {
            one_write(&format!(
                "error on {}: {error}\nending the whole MPI job\n",
                self.who()
            ));
            self.collective.abort(1)
        }
        eprintln!("error: {error}");
        std::process::exit(1)
    }

    /// Sets what this rank prints if the launcher ends it with SIGTERM (as `mpirun` ends the
    /// survivors when a rank fails): where the last intact checkpoint in `out` is. Nothing alone.
    pub fn say_checkpoint_on_sigterm(&self, out: &Path) {
        if self.size() == 1 {
            return;
        }
        let kept = match (self.rank(), find_checkpoint(out)) {
            // Rank 0 writes the checkpoints: another rank names the folder.
            (0, Some(dir)) => format!("the last checkpoint, {}, is intact", dir.display()),
            (0, None) => "no checkpoint had been written yet".into(),
            _ => format!(
                "the last checkpoint rank 0 wrote in {} is intact",
                out.display()
            ),
        };
        let _line = format!(
            "{}: ended by SIGTERM (mpirun ends the job so when another rank fails, or the job was \
             cancelled); {kept}: rerun with --resume under mpirun\n",
            self.who()
        );
        #[cfg(all(unix, feature = "mpi"))]
        on_sigterm::set(_line);
    }
}

/// What crossed between the processes of an MPI job (the payload bytes summed per step, the
/// time spent in the sums against the steps' time), after checking that the ranks' adapters
/// are bit-identical.
pub fn summary<M: CausalLm>(trainer: &Trainer<M>) -> Result<(), TrainError> {
    let history = &trainer.state.history;
    let (bytes, comm, total) = history.iter().fold((0u64, 0.0, 0.0), |(b, c, t), r| {
        (b.max(r.transfer_bytes), c + r.comm_seconds, t + r.seconds)
    });
    println!(
        "all-reduced per step: {:.3} MB of adapter gradients (the payload; the base never \
         travels); {comm:.3} s of {total:.2} s in steps spent in the sums, waiting for the \
         slower rank included ({:.1} %)",
        bytes as f64 / 1e6,
        comm / total.max(1e-9) * 100.0
    );
    let h = trainer.ranks_agree()?;
    println!(
        "the {} ranks' adapters are bit-identical (fingerprint {h:016x})",
        trainer.rank_and_size().1
    );
    Ok(())
}

/// This process's index among the job's processes on its node, from the launcher.
fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "PMIX_LOCAL_RANK",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The count in environment variable `var` where it is above 1.
fn env_count(var: &str) -> Option<usize> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 1)
}

/// Writes `text` to standard error in one call, so that the ranks' lines do not interleave.
fn one_write(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Sends this process's standard output to /dev/null: ranks other than 0 would print every
/// line again (errors still go to standard error).
#[cfg(feature = "mpi")]
fn quiet_stdout() {
    #[cfg(unix)]
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 on two open descriptors; stdout is replaced atomically.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

/// A SIGTERM handler that writes a prepared line to standard error and exits.
#[cfg(all(unix, feature = "mpi"))]
mod on_sigterm {
    use std::sync::atomic::{AtomicPtr, Ordering};
    use std::sync::{Mutex, Once};

    /// The line, published as one pointer to a leaked, never freed, never changed buffer.
    static LINE: AtomicPtr<Vec<u8>> = AtomicPtr::new(std::ptr::null_mut());
    static LAST: Mutex<String> = Mutex::new(String::new());
    static INSTALL: Once = Once::new();

    /// Makes `line` the message. A line equal to the last one leaks nothing; a new one leaks
    /// the old (a handler may be reading it), which happens a few times a run, not per step.
    pub fn set(line: String) {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if *last == line {
            return;
        }
        let buf: &'static mut Vec<u8> = Box::leak(Box::new(line.clone().into_bytes()));
        LINE.store(buf, Ordering::SeqCst);
        *last = line;
        INSTALL.call_once(|| {
            // SAFETY: installs an async-signal-safe handler (an atomic load, write, _exit).
            unsafe {
                libc::signal(libc::SIGTERM, handler as *const () as libc::sighandler_t);
            }
        });
    }

    extern "C" fn handler(_: libc::c_int) {
        let line = LINE.load(Ordering::SeqCst);
        // SAFETY: a non-null `line` points at a leaked Vec that is never freed or changed;
        // write(2) and _exit(2) are async-signal-safe.
        unsafe {
            if let Some(v) = line.as_ref() {
                libc::write(2, v.as_ptr() as *const libc::c_void, v.len());
            }
            libc::_exit(143);
        }
    }
}
