//! [`Collective`]: the seam through which the trainer's processes agree, one per device, each
//! running the same program on its share of every micro-batch (data parallelism across
//! processes and nodes, as `torch.distributed` gives PyTorch trainers).
//!
//! Burn 0.22.1 has no collective across processes (its `all_reduce` is CubeCL-CUDA's NCCL inside
//! one process), so the trainer asks this trait instead: [`SingleProcess`] is today's one process
//! (every call a no-op), [`MpiCollective`](crate::MpiCollective) (cargo feature `mpi`) runs over
//! MPI as `mpirun`/`srun` start it; NCCL would be a third implementation.
//!
//! Every sum leaves the same bits on every rank, so that the ranks' optimizers take the same
//! steps and their adapters stay bit-identical.

/// What the trainer needs of a group of processes (see the module docs).
pub trait Collective: Send + Sync {
    /// This process's index, from 0.
    fn rank(&self) -> usize;

    /// How many processes train together.
    fn size(&self) -> usize;

    /// Sums `values` element-wise over the ranks, in place; every rank ends with the same bits.
    fn sum_f32(&self, values: &mut [f32]);

    /// [`Collective::sum_f32`] for `f64`.
    fn sum_f64(&self, values: &mut [f64]);

    /// Every rank's `value`, in rank order.
    fn gather_u64(&self, value: u64) -> Vec<u64>;

    /// Ends every process of the job with exit code `code` (MPI's `MPI_Abort`); the caller has
    /// printed why. A rank that stopped alone would leave the others waiting in a sum.
    fn abort(&self, code: i32) -> !;

    /// Whether this is the process that writes files (rank 0).
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
}

/// One process alone (today's path): every sum is the value itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn sum_f32(&self, _: &mut [f32]) {}

    fn sum_f64(&self, _: &mut [f64]) {}

    fn gather_u64(&self, value: u64) -> Vec<u64> {
        vec![value]
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
