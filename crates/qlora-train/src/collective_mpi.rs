//! [`MpiCollective`]: [`Collective`] over MPI (the `mpi` crate, rsmpi), for a job started by
//! `mpirun -np N` or SLURM's `srun`: one process per device, on one machine or several, over
//! whatever MPI runs on (TCP, shared memory, InfiniBand).
//!
//! Sums are a reduce to rank 0 followed by a broadcast from it, not `MPI_Allreduce`: an
//! all-reduce may add in another order on each rank (recursive doubling, rings), and ranks whose
//! gradients differ in the last bit would drift apart over the steps; after the broadcast every
//! rank holds rank 0's bits. The cost is one more latency per step, for the adapter's gradients
//! only (about 20 MB for SmolLM2-135M at r16).

use std::sync::Mutex;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use crate::Collective;

/// The processes of an MPI job (see the module docs). MPI is finalized when this is dropped;
/// dropped while its thread panics, it ends the whole job instead (`MPI_Abort`), since
/// `MPI_Finalize` would wait for ranks that wait in a sum for this one.
pub struct MpiCollective {
    mpi: Mutex<Mpi>,
    rank: usize,
    size: usize,
}

/// The world communicator and the universe whose drop finalizes MPI.
struct Mpi {
    world: SimpleCommunicator,
    // Dropped after `world`.
    _universe: Universe,
}

// SAFETY: MPI is initialized with `MPI_THREAD_SERIALIZED` (checked in `from_launcher`): any
// thread may call it, one at a time, which the `Mutex` around `Mpi` ensures.
unsafe impl Send for Mpi {}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiCollective(rank {} of {})", self.rank, self.size)
    }
}

/// Environment variables that MPI launchers set in the processes they start: Open MPI's
/// `mpirun`, PMIx (Open MPI 5, `srun --mpi=pmix`), MPICH's Hydra and PMI-2 `srun`.
pub const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"];

impl MpiCollective {
    /// The job this process was started in by an MPI launcher, or `None` when no launcher
    /// started it (a plain run: MPI is not initialized at all, so that such a run behaves as a
    /// build without MPI).
    ///
    /// Errors if a launcher's variables are set but MPI cannot be initialized (it was
    /// initialized already, or the library refuses).
    pub fn from_launcher() -> Result<Option<Self>, String> {
        if !LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            return Ok(None);
        }
        // The trainer may live on any thread; its calls never overlap (one `Mutex`).
        let (universe, provided) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or(
                "MPI: the launcher's environment is set but MPI could not be initialized \
                 (initialized twice?)",
            )?;
        if provided < mpi::Threading::Serialized {
            return Err(format!(
                "MPI: this MPI library offers thread level {provided:?}; the trainer needs \
                 Serialized (calls from one thread at a time, not always the main one)"
            ));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Some(Self {
            mpi: Mutex::new(Mpi {
                world,
                _universe: universe,
            }),
            rank,
            size,
        }))
    }

    /// This host's name as MPI gives it, for messages that name a rank.
    pub fn host(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "?".into())
    }

    fn reduce_broadcast<T>(&self, values: &mut [T])
    where
        T: mpi::datatype::Equivalence + Copy + Default,
    {
        if self.size == 1 || values.is_empty() {
            return;
        }
        let mpi = self.lock();
        let root = mpi.world.process_at_rank(0);
        if self.rank == 0 {
            let mut sum = vec![T::default(); values.len()];
            root.reduce_into_root(&values[..], &mut sum[..], SystemOperation::sum());
            values.copy_from_slice(&sum);
        } else {
            root.reduce_into(&values[..], SystemOperation::sum());
        }
        root.broadcast_into(values);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mpi> {
        // A panic while holding the lock left MPI as it was: the data is still valid.
        self.mpi.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for MpiCollective {
    fn drop(&mut self) {
        if std::thread::panicking() && self.size > 1 {
            eprintln!(
                "rank {} of {} panicked: ending the whole MPI job",
                self.rank, self.size
            );
            self.lock().world.abort(1);
        }
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, values: &mut [f32]) {
        self.reduce_broadcast(values);
    }

    fn sum_f64(&self, values: &mut [f64]) {
        self.reduce_broadcast(values);
    }

    fn gather_u64(&self, value: u64) -> Vec<u64> {
        let mut all = vec![0u64; self.size];
        self.lock().world.all_gather_into(&value, &mut all[..]);
        all
    }

    fn abort(&self, code: i32) -> ! {
        self.lock().world.abort(code)
    }
}
