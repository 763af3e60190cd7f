"""``python -m fedhem_kernel.kernel -f CONNECTION_FILE``: what the ``fedhem`` kernelspec runs."""

from ipykernel.kernelapp import IPKernelApp

from fedhem_kernel.kernel.kernel import FedHemKernel

if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=FedHemKernel)
