//! The host side shared by the CubeCL ops: tensors made contiguous in a float type, new ones
//! like them, and their buffers as kernel arguments.

use burn::backend::{DType, Shape, TensorMetadata, ops::FloatTensorOps};
use burn_cubecl::{
    CubeBackend, cubecl::prelude::*, kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
};

/// `t` in `dtype` (a cast only where it differs).
pub(super) fn cast_to(t: CubeTensor, dtype: DType) -> CubeTensor {
    if t.dtype == dtype {
        t
    } else {
        CubeBackend::float_cast(t, dtype.into())
    }
}

/// `t` contiguous and in `dtype`.
pub(super) fn contiguous_as(t: CubeTensor, dtype: DType) -> CubeTensor {
    into_contiguous(cast_to(t, dtype))
}

/// A new contiguous tensor of `shape` on `like`'s device, in its float type.
pub(super) fn empty_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, like.dtype)
}

/// `t`'s buffer as a kernel argument.
///
/// # Safety
/// `t` is contiguous (its buffer holds its shape's count of elements).
pub(super) unsafe fn buffer(t: &CubeTensor) -> BufferArg {
    // SAFETY: as the caller promises.
    unsafe { BufferArg::from_raw_parts(t.handle.clone(), t.shape().num_elements()) }
}
