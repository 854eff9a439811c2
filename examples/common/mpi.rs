//! The MPI job a program may have been started in (`mpirun -np N`, `srun`): one process per
//! device, data parallel through [`burn_qlora::train::Collective`] (issue #37).
//!
//! Built with `--features mpi`, a program finds the job itself from the launcher's environment;
//! started without a launcher it is one process and MPI is never initialized. Built without the
//! feature, a launch of several processes is refused: each would train alone and write the same
//! files.

use std::rc::Rc;

use burn_qlora::train::{Collective, SingleProcess};

/// The job: the collective, and this process's place in it for messages.
#[derive(Clone)]
pub struct Job {
    pub collective: Rc<dyn Collective>,
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
                collective: Rc::new(mpi),
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
            if let Some(n) = std::env::var(var)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                && n > 1
            {
                return Err(format!(
                    "started by an MPI launcher as one of {n} processes ({var}={n}), but this \
                     binary was built without MPI: rebuild with `--features mpi`"
                ));
            }
        }
        Ok(Self {
            collective: Rc::new(SingleProcess),
            host: String::new(),
        })
    }

    /// What this process prints if the launcher ends the job because another rank failed
    /// (Open MPI sends SIGTERM to the survivors before SIGKILL): `message` plus a new line.
    /// Set again after every checkpoint, so that it names the last one. Nothing alone.
    pub fn on_launcher_kill(&self, message: &str) {
        if self.size() > 1 {
            let line = format!(
                "rank {} of {} ({}): ended by the MPI launcher after another rank failed; {message}\n",
                self.rank(),
                self.size(),
                self.host
            );
            #[cfg(all(unix, feature = "mpi"))]
            on_sigterm::set(line);
            #[cfg(not(all(unix, feature = "mpi")))]
            let _ = line;
        }
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    pub fn size(&self) -> usize {
        self.collective.size()
    }

    /// Prints `error` naming this rank and ends every process of the job; alone, prints it and
    /// exits with 1.
    pub fn fail(&self, error: &dyn std::fmt::Display) -> ! {
        if self.size() > 1 {
            one_write(&format!(
                "error on rank {} of {} ({}, pid {}): {error}\nending the whole MPI job\n",
                self.rank(),
                self.size(),
                self.host,
                std::process::id()
            ));
            self.collective.abort(1)
        }
        eprintln!("error: {error}");
        std::process::exit(1)
    }
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

/// A SIGTERM handler that writes a prepared line to standard error and exits: what a rank says
/// when `mpirun` ends the job for another rank's failure.
#[cfg(all(unix, feature = "mpi"))]
mod on_sigterm {
    use std::sync::Once;
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

    static LINE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
    static LEN: AtomicUsize = AtomicUsize::new(0);
    static INSTALL: Once = Once::new();

    /// Makes `line` the message (the previous one is leaked: a handler may be reading it).
    pub fn set(line: String) {
        let bytes: &'static mut [u8] = Box::leak(line.into_bytes().into_boxed_slice());
        LEN.store(0, Ordering::SeqCst);
        LINE.store(bytes.as_mut_ptr(), Ordering::SeqCst);
        LEN.store(bytes.len(), Ordering::SeqCst);
        INSTALL.call_once(|| {
            // SAFETY: installs an async-signal-safe handler (two atomic loads, write, _exit).
            unsafe {
                libc::signal(libc::SIGTERM, handler as *const () as libc::sighandler_t);
            }
        });
    }

    extern "C" fn handler(_: libc::c_int) {
        let (ptr, len) = (LINE.load(Ordering::SeqCst), LEN.load(Ordering::SeqCst));
        // SAFETY: `ptr` points at a leaked buffer of at least `len` bytes (or `len` is 0);
        // write(2) and _exit(2) are async-signal-safe.
        unsafe {
            if !ptr.is_null() && len > 0 {
                libc::write(2, ptr as *const libc::c_void, len);
            }
            libc::_exit(143);
        }
    }
}
