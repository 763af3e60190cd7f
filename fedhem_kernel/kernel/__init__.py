"""The FedHem Jupyter kernel (``FedHemKernel``), its ``%fed`` magics and kernelspec installer.

Kept light on purpose: ``python -m fedhem_kernel install`` must not start importing ipykernel.
Import ``fedhem_kernel.kernel.kernel`` for the kernel class.
"""
