"""More than one lab or kernel at a time: -j pools, kernels side by side, bisection."""
