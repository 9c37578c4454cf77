"""Backend implementations. Importing this package registers every backend and its kernels."""
from . import cpu_backend, cuda_backend, torch_backend, torch_selective, triton_backend  # noqa: F401
from . import torch_tokens  # noqa: F401
