// touch: the L2 guest that touches memory in a set pattern, then powers off.
//
// It runs with the MMU off, so every address is an IPA and every first access to a page
// not yet mapped at stage 2 is a stage-2 fault in L1 (kvm:kvm_guest_fault). The code is
// position independent: the probe VMM loads touch.bin at any IPA, L1's QEMU loads
// touch.elf (linked at 0x40080000, QEMU virt's kernel address).
//
// Parameters: the 128-byte block at `params`, which the host patches per scenario
// (lab/builder/payload.py keeps the layout). vCPU 0 starts the others with PSCI CPU_ON; vCPU i
// takes the i-th share of the accesses (or, with P_WHOLE, all of them). Between passes all
// vCPUs meet at a barrier; a pass flagged PAUSE makes vCPU 0 print "kvmlab-touch: pause" on
// the PL011 and wait for a byte on it (the VMM answers once it has done what the scenario
// asks at that point); a pass also flagged L2_TLBI then makes it call hvc KVMLAB_L2_TLBI,
// asking the guest hypervisor above it (gh.S; only in a nested scenario) to invalidate the
// stage-2 the VMM rewrote at that pause. At the end vCPU 0 prints "kvmlab-touch: done" and
// calls PSCI SYSTEM_OFF; the others CPU_OFF.

    .equ P_MAGIC,    0
    .equ P_BASE,     8
    .equ P_SIZE,     16
    .equ P_STRIDE,   24
    .equ P_ORDER,    32      // 0 forward, 1 backward, 2 scattered
    .equ P_NCPUS,    40
    .equ P_UART,     48      // PL011 base, 0: silent
    .equ P_NPASSES,  56
    .equ P_PASSES,   64      // 4 x u64 flags: bit 0 write, bit 1 pause before, bit 2 read first,
                             //   bit 3 hvc KVMLAB_L2_TLBI after the pause
    .equ P_COUNTER,  96      // passes finished, summed over vCPUs
    .equ P_RELEASE,  104     // passes vCPU 0 has released
    .equ P_FOREVER,  112     // 1: repeat the passes until the VMM is killed
    .equ P_WHOLE,    120     // 1: every vCPU touches the whole range (not its share)

    .equ PSCI_CPU_ON,     0xc4000003
    .equ PSCI_CPU_OFF,    0x84000002
    .equ PSCI_SYSTEM_OFF, 0x84000008
    .equ SCATTER_PRIME,   1000003
    .equ KVMLAB_L2_TLBI,  0xc6004b00   // gh.S: invalidate what the VMM rewrote of L2's stage-2

    .section .text.start, "ax"
    .globl _start
_start:
    adr     x20, params
    mov     x21, #0                     // vCPU index
    mov     x19, #1
1:  ldr     x9, [x20, #P_NCPUS]
    cmp     x19, x9
    b.hs    common
    ldr     x0, =PSCI_CPU_ON
    mov     x1, x19                     // MPIDR: Aff0 = index (up to 8 vCPUs)
    adr     x2, secondary
    mov     x3, x19                     // context id: arrives in x0
    hvc     #0
    add     x19, x19, #1
    b       1b

secondary:
    mov     x21, x0
    adr     x20, params

common:
    ldr     x23, [x20, #P_BASE]
    ldr     x24, [x20, #P_STRIDE]
    ldr     x9, [x20, #P_SIZE]
    udiv    x25, x9, x24                // n accesses in all
    ldr     x10, [x20, #P_NCPUS]
    mul     x11, x25, x21
    udiv    x26, x11, x10               // this vCPU: [lo, hi)
    add     x12, x21, #1
    mul     x11, x25, x12
    udiv    x27, x11, x10
    ldr     x9, [x20, #P_WHOLE]
    cbz     x9, 1f
    mov     x26, #0                     // whole: [0, n) for every vCPU
    mov     x27, x25
1:
    ldr     x28, [x20, #P_UART]
    mov     x22, #0                     // passes done by this vCPU

pass:
    ldr     x9, [x20, #P_NPASSES]
    udiv    x10, x22, x9
    msub    x13, x10, x9, x22           // p = k mod npasses
    add     x10, x20, #P_PASSES
    ldr     x14, [x10, x13, lsl #3]     // this pass's flags
    cbnz    x21, wait_release
    // vCPU 0: wait for every vCPU to finish pass k-1, pause if asked, release pass k.
    ldr     x9, [x20, #P_NCPUS]
    mul     x9, x9, x22
    add     x10, x20, #P_COUNTER
2:  ldar    x11, [x10]
    cmp     x11, x9
    b.lo    2b
    tbz     x14, #1, release
    adr     x0, msg_pause
    bl      puts
    bl      wait_go
    tbz     x14, #3, release
    ldr     x0, =KVMLAB_L2_TLBI
    hvc     #0
release:
    add     x9, x22, #1
    add     x10, x20, #P_RELEASE
    stlr    x9, [x10]
    b       do_pass
wait_release:
    add     x10, x20, #P_RELEASE
3:  ldar    x9, [x10]
    cmp     x9, x22
    b.ls    3b

do_pass:
    ldr     x18, [x20, #P_ORDER]
    mov     x15, x26
4:  cmp     x15, x27
    b.hs    pass_done
    cbz     x18, forward
    cmp     x18, #1
    b.eq    backward
    ldr     x10, =SCATTER_PRIME         // scattered: j * prime mod n, a permutation of [0, n)
    mul     x11, x15, x10
    udiv    x12, x11, x25
    msub    x16, x12, x25, x11
    b       access
forward:
    mov     x16, x15
    b       access
backward:
    sub     x16, x25, x15
    sub     x16, x16, #1
access:
    madd    x17, x16, x24, x23          // IPA = base + index * stride
    tbnz    x14, #0, write
    ldr     x9, [x17]
    b       next
write:
    tbz     x14, #2, 5f
    ldr     x9, [x17]
5:  str     x15, [x17]
next:
    add     x15, x15, #1
    b       4b

pass_done:
    add     x10, x20, #P_COUNTER
6:  ldaxr   x9, [x10]
    add     x9, x9, #1
    stlxr   w11, x9, [x10]
    cbnz    w11, 6b
    add     x22, x22, #1
    ldr     x9, [x20, #P_FOREVER]
    cbnz    x9, pass
    ldr     x9, [x20, #P_NPASSES]
    cmp     x22, x9
    b.lo    pass
    cbnz    x21, cpu_off
    ldr     x9, [x20, #P_NCPUS]
    mul     x9, x9, x22
7:  ldar    x11, [x10]
    cmp     x11, x9
    b.lo    7b
    adr     x0, msg_done
    bl      puts
    ldr     x0, =PSCI_SYSTEM_OFF
    hvc     #0
    b       .
cpu_off:
    ldr     x0, =PSCI_CPU_OFF
    hvc     #0
    b       .

    .include "puts.inc"

// wait_go: poll the PL011 flag register until a byte arrives (RXFE clear), take it.
wait_go:
    cbz     x28, 2f
1:  ldr     w9, [x28, #0x18]
    tbnz    w9, #4, 1b
    ldr     w9, [x28]
2:  ret

    .ltorg
msg_pause:
    .asciz  "kvmlab-touch: pause\n"
msg_done:
    .asciz  "kvmlab-touch: done\n"

    .balign 64
    .globl params
params:
    .ascii  "KVMLABT1"
    .fill   15, 8, 0
