// gh: kvmlab's guest hypervisor. It runs in L2 at virtual EL2 (L1's KVM with
// kvm-arm.mode=nested, a vCPU with KVM_ARM_VCPU_HAS_EL2), maps L3 with its own stage-2
// and runs the touch payload (touch.S) as L3 at EL1, so that L1's KVM has to build a
// shadow stage-2 from L2's tables: the thing a nested scenario measures.
//
// The vCPU resets into EL2h with HCR_EL2.E2H RES1 (a VHE guest hypervisor) and the MMU
// off: every address here is an L2 IPA. The stage-2 tables for L3 are written into this
// memslot by the probe VMM before any vCPU runs (lab/shared/stage2.py has their format);
// from its parameters the payload loads VTCR_EL2, VTTBR_EL2 and HCR_EL2 and enters L3.
//
// L3's exits it handles (vector 0x400, a synchronous exception from a lower EL):
//   hvc     PSCI from L3: CPU_ON starts the L2 vCPU of the same index at `secondary`,
//           which enters L3 at L3's entry point with L3's context id; CPU_OFF,
//           SYSTEM_OFF and VERSION are passed on to L1's KVM; anything else is
//           NOT_SUPPORTED. Its own PSCI calls go to L1 with smc: KVM forwards every hvc
//           of a vCPU with EL2 to that vCPU's own EL2, and takes smc as PSCI.
//   hvc KVMLAB_L2_TLBI from L3, after a pause at which the VMM rewrote L2's stage-2 for
//           L3 (a scenario's l2_hypervisor.remap): L2 invalidates what it changed, as a
//           hypervisor must after changing a live stage-2: TLBI IPAS2E1IS for each leaf of
//           [H_TLBI_BASE, + H_TLBI_SIZE) in steps of H_TLBI_STEP (the old leaf size), then
//           DSB, TLBI VMALLE1IS, DSB. L1's KVM traps each and unmaps that much of the
//           shadow stage-2 (7.2: handle_ipas2e1is); R_TLBIS counts them.
//   a stage-2 abort that L1's KVM handed back to L2 (L2's tables had no entry, or one
//           that did not allow the access): counted with its ESR, FAR and HPFAR in the
//           vCPU's report, printed, and the run ends with SYSTEM_OFF. Never hidden.
// Anything else (any other vector or exception class) is recorded the same way and ends
// the run. The report (per vCPU, 128 bytes at H_REPORT) is read by the probe at the end.
//
// Two L3 guests (a scenario's l2_hypervisor.vmids: 2): the odd vCPUs run L3 under a
// second stage-2, H_VTTBR2 (another VMID, a copy of the tables at another root), so that
// L1's KVM keeps a shadow MMU for each (lookup_s2_mmu matches VTTBR and VTCR).
//
// Parameters: the 128-byte block at `params`, patched per scenario by the host
// (lab/scenarios/jobs.py), magic "KVMLABH1".

    .arch   armv8.4-a

    .equ H_MAGIC,    0
    .equ H_VTTBR,    8
    .equ H_VTCR,     16
    .equ H_HCR,      24
    .equ H_ENTRY,    32      // L3's entry point (an L3 IPA)
    .equ H_UART,     40      // PL011 base (an L2 IPA), 0: silent
    .equ H_STACKS,   48      // top of the stacks: vCPU i's is 4 KiB below it times i
    .equ H_REPORT,   56      // the per-vCPU reports (128 bytes each)
    .equ H_TLBI_BASE, 64     // what KVMLAB_L2_TLBI invalidates: an L3 IPA range ...
    .equ H_TLBI_SIZE, 72
    .equ H_TLBI_STEP, 80     // ... one TLBI IPAS2E1IS per step (0: nothing)
    .equ H_VTTBR2,   88      // the odd vCPUs' stage-2 (another VMID, its own tables), 0: H_VTTBR

    .equ R_HVCS,       0     // L3's hvc calls
    .equ R_S2FAULTS,   8     // stage-2 aborts handed back to L2
    .equ R_ESR,        16    // of the last one (or of the unexpected exception)
    .equ R_FAR,        24
    .equ R_HPFAR,      32
    .equ R_UNEXPECTED, 40    // 1 + the vector number of an unexpected exception
    .equ R_L3PC,       48    // where this vCPU enters L3, and L3's x0 there
    .equ R_L3CTX,      56
    .equ R_PSCI_RET,   64    // what L1 answered this vCPU's last PSCI call on L3's behalf
    .equ R_ENTERED,    72    // times this vCPU entered L3 (1 once it has started)
    .equ R_TLBIS,      80    // TLBI IPAS2E1IS done at L3's request (KVMLAB_L2_TLBI)

    .equ PSCI_VERSION,    0x84000000
    .equ PSCI_CPU_ON,     0xc4000003
    .equ PSCI_CPU_OFF,    0x84000002
    .equ PSCI_SYSTEM_OFF, 0x84000008
    .equ PSCI_NOT_SUPPORTED, -1
    .equ KVMLAB_L2_TLBI,  0xc6004b00   // SMCCC vendor-specific hypervisor range: kvmlab's own
    .equ EC_HVC64,        0x16
    .equ EC_IABT_LOW,     0x20
    .equ EC_DABT_LOW,     0x24
    .equ SPSR_EL1H_MASKED, 0x3c5
    .equ SCTLR_EL1_RES1,  0x30d00800   // MMU, caches and alignment checks off

    .section .text.start, "ax"
    .globl _start
_start:                                 // vCPU 0
    adr     x20, params
    mov     x21, #0
    ldr     x9, [x20, #H_REPORT]
    ldr     x10, [x20, #H_ENTRY]
    str     x10, [x9, #R_L3PC]
    str     xzr, [x9, #R_L3CTX]
    b       el2_setup

secondary:                              // from PSCI CPU_ON: x0 = this vCPU's index
    mov     x21, x0
    adr     x20, params

el2_setup:
    ldr     x9, [x20, #H_STACKS]
    sub     x9, x9, x21, lsl #12
    mov     sp, x9
    adr     x9, vectors
    msr     vbar_el2, x9
    ldr     x9, [x20, #H_VTCR]
    msr     vtcr_el2, x9
    ldr     x9, [x20, #H_VTTBR]
    ldr     x10, [x20, #H_VTTBR2]
    tst     x21, #1
    csel    x9, x10, x9, ne             // an odd vCPU: the second L3 guest's stage-2 ...
    cbnz    x9, 1f
    ldr     x9, [x20, #H_VTTBR]         // ... if there is one
1:  msr     vttbr_el2, x9
    mrs     x9, mpidr_el1
    msr     vmpidr_el2, x9
    ldr     x9, =SCTLR_EL1_RES1
    msr     sctlr_el12, x9
    ldr     x9, [x20, #H_HCR]
    msr     hcr_el2, x9
    isb
    tlbi    vmalls12e1
    dsb     nsh
    isb
    ldr     x9, [x20, #H_REPORT]
    add     x9, x9, x21, lsl #7
    ldr     x10, [x9, #R_ENTERED]
    add     x10, x10, #1
    str     x10, [x9, #R_ENTERED]
    ldr     x10, [x9, #R_L3PC]
    ldr     x0, [x9, #R_L3CTX]
    msr     elr_el2, x10
    mov     x10, #SPSR_EL1H_MASKED
    msr     spsr_el2, x10
    eret

// -- exits from L3 ------------------------------------------------------------------
lower_sync:
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    bl      this_vcpu
    mrs     x9, esr_el2
    lsr     x10, x9, #26
    cmp     x10, #EC_HVC64
    b.eq    l3_hvc
    cmp     x10, #EC_DABT_LOW
    b.eq    s2_abort
    cmp     x10, #EC_IABT_LOW
    b.eq    s2_abort
    mov     x9, #8
    b       unexpected

l3_hvc:
    ldr     x11, [x22, #R_HVCS]
    add     x11, x11, #1
    str     x11, [x22, #R_HVCS]
    ldr     w0, [sp, #0]
    ldr     w1, =KVMLAB_L2_TLBI
    cmp     w0, w1
    b.eq    l2_tlbi
    ldr     w1, =PSCI_CPU_ON
    cmp     w0, w1
    b.eq    cpu_on
    ldr     w1, =PSCI_CPU_OFF
    cmp     w0, w1
    b.eq    pass_on
    ldr     w1, =PSCI_SYSTEM_OFF
    cmp     w0, w1
    b.eq    pass_on
    ldr     w1, =PSCI_VERSION
    cmp     w0, w1
    b.eq    pass_on
    mov     x0, #PSCI_NOT_SUPPORTED
    b       hvc_return
pass_on:
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    smc     #0
    str     x0, [x22, #R_PSCI_RET]
    b       hvc_return
cpu_on:                                 // L3's x1 target MPIDR, x2 entry, x3 context id
    ldp     x1, x2, [sp, #8]
    ldr     x3, [sp, #24]
    and     x4, x1, #0xff
    cmp     x4, #8
    b.hs    cpu_on_bad
    ldr     x5, [x20, #H_REPORT]
    add     x5, x5, x4, lsl #7
    str     x2, [x5, #R_L3PC]
    str     x3, [x5, #R_L3CTX]
    dsb     sy
    ldr     x0, =PSCI_CPU_ON
    adr     x2, secondary
    mov     x3, x4
    smc     #0
    str     x0, [x22, #R_PSCI_RET]
    b       hvc_return
cpu_on_bad:
    mov     x0, #-2                     // PSCI INVALID_PARAMETERS
    b       hvc_return
l2_tlbi:                                // the VMM rewrote L2's stage-2 at the pause: invalidate it
    ldr     x1, [x20, #H_TLBI_BASE]
    ldr     x2, [x20, #H_TLBI_SIZE]
    ldr     x3, [x20, #H_TLBI_STEP]
    add     x2, x2, x1
    ldr     x4, [x22, #R_TLBIS]
    dsb     ishst                       // the new descriptors are visible before the TLBIs
    cbz     x3, 2f
1:  cmp     x1, x2
    b.hs    2f
    lsr     x5, x1, #12                 // IPA[47:12], no TTL hint
    tlbi    ipas2e1is, x5
    add     x4, x4, #1
    add     x1, x1, x3
    b       1b
2:  dsb     ish
    tlbi    vmalle1is
    dsb     ish
    isb
    str     x4, [x22, #R_TLBIS]
    mov     x0, #0
hvc_return:
    str     x0, [sp, #0]
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #256
    eret

s2_abort:                               // x9 = ESR_EL2
    ldr     x11, [x22, #R_S2FAULTS]
    add     x11, x11, #1
    str     x11, [x22, #R_S2FAULTS]
    bl      record
    adr     x0, msg_abort
    bl      puts
    b       system_off

// unexpected: x9 = the vector number (8: a lower-EL sync exception of another class)
unexpected:
    bl      this_vcpu
    add     x9, x9, #1
    str     x9, [x22, #R_UNEXPECTED]
    mrs     x9, esr_el2
    bl      record
    adr     x0, msg_unexpected
    bl      puts
system_off:
    ldr     x0, =PSCI_SYSTEM_OFF
    smc     #0
    b       .

// this_vcpu: x20 params, x28 the UART, x21 this vCPU's index (MPIDR Aff0), x22 its report
this_vcpu:
    adr     x20, params
    ldr     x28, [x20, #H_UART]
    mrs     x21, mpidr_el1
    and     x21, x21, #0xff
    ldr     x22, [x20, #H_REPORT]
    add     x22, x22, x21, lsl #7
    ret

// record: ESR (x9), FAR_EL2 and HPFAR_EL2 into the report at x22
record:
    str     x9, [x22, #R_ESR]
    mrs     x10, far_el2
    str     x10, [x22, #R_FAR]
    mrs     x10, hpfar_el2
    str     x10, [x22, #R_HPFAR]
    dsb     sy
    ret

    .include "puts.inc"

    .ltorg
msg_abort:
    .asciz  "kvmlab-gh: stage-2 abort from L3\n"
msg_unexpected:
    .asciz  "kvmlab-gh: unexpected exception\n"

// -- vectors: only a synchronous exception from a lower EL (L3) is expected ---------
    .balign 2048
vectors:
    .irp    n, 0, 1, 2, 3, 4, 5, 6, 7
    .balign 128
    mov     x9, #\n
    b       unexpected
    .endr
    .balign 128
    b       lower_sync                  // 0x400
    .irp    n, 9, 10, 11, 12, 13, 14, 15
    .balign 128
    mov     x9, #\n
    b       unexpected
    .endr

    .balign 64
    .globl params
params:
    .ascii  "KVMLABH1"
    .fill   15, 8, 0
