"""smp-lite: self-supervised motion perception (SMP) and playback-rate perception (PRP)."""

# torch must be loaded before decord: decord pulls in CUDA's NVBLAS, which otherwise takes over
# torch's CPU BLAS and kills the process at the first matrix product.
import torch  # noqa: F401

__version__ = "0.1.0"
