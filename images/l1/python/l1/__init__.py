"""What runs inside L1 (Debian's arm64 python3, standard library only).

kvmlab copies this package into the lab's share and runs it there as `python3 -m l1.NAME`:
- kvm.py: the KVM API through ctypes (ioctls, structures, memory backings);
- probe.py: the programmable probe VMM (exact memslots, backings, VMM actions);
- qemu_vmm.py: L1's arm64 QEMU as the VMM, driven through its own QMP socket;
- tracefs.py: tracepoint capture with loss accounting, raw per-CPU buffers to the share;
- scenario.py: one scenario end to end in L1 (settings, capture, VMM, artefacts);
- payload/: the L2 guest programs (aarch64 assembly, built with the images).
"""
