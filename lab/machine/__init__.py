"""L0: the QEMU that runs L1, and a lab's life around it (lab.py, and the steps it is made of)."""
