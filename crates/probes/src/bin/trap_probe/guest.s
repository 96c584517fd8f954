# trap_probe guest: a command loop at CPL 3 (mailbox at 0x40000), loaded at 0x30000.
# Assemble: as guest.s -o g.o && objcopy -O binary g.o g.bin && xxd -i g.bin
.intel_syntax noprefix
.code64
.set MB, 0x40000
.org 0
top:
  out 0x10, al
  mov rax, [MB]
  mov rbx, [MB+8]
  cmp rax, 1
  je c_read
  cmp rax, 2
  je c_write
  cmp rax, 3
  je c_ud
  cmp rax, 4
  je c_int3
  cmp rax, 5
  je c_div
  cmp rax, 6
  je c_spin
  cmp rax, 7
  je c_flags
  cmp rax, 8
  je c_cli
  cmp rax, 9
  je c_sti
  cmp rax, 10
  je c_segs
  cmp rax, 11
  je c_loop_int3
  cmp rax, 12
  je c_loop_ud
  cmp rax, 13
  je c_loop_pf
  jmp top
c_read:
  mov rcx, [rbx]
  mov [MB+0x10], rcx
  jmp top
c_write:
  mov rcx, [MB+0x18]
  mov [rbx], rcx
  jmp top
c_ud:
  ud2
c_int3:
  int3
  jmp top
c_div:
  xor edx, edx
  xor eax, eax
  xor ecx, ecx
  div rcx
  jmp top
c_spin:
  rdtsc
  shl rdx, 32
  or rax, rdx
  mov [MB+0x20], rax
  inc qword ptr [MB+0x28]
  cmp qword ptr [MB+0x38], 0
  je c_spin
  jmp top
c_flags:
  pushfq
  pop rcx
  mov [MB+0x10], rcx
  jmp top
c_cli:
  cli
  pushfq
  pop rcx
  mov [MB+0x10], rcx
  jmp top
c_sti:
  sti
  pushfq
  pop rcx
  mov [MB+0x10], rcx
  jmp top
c_segs:
  mov rcx, cs
  mov [MB+0x10], rcx
  mov rcx, ss
  mov [MB+0x18], rcx
  mov [MB+0x30], rsp
  jmp top
c_loop_int3:
  int3
  dec rbx
  jnz c_loop_int3
  jmp top
c_loop_ud:
  ud2
  dec rbx
  jnz c_loop_ud
  jmp top
c_loop_pf:
  mov rsi, [MB+0x18]
1:
  mov rcx, [rsi]
  dec rbx
  jnz 1b
  jmp top

# Direct CPL-3 handlers (hardware frame, no VMM): offsets 0x200.. (see vm.rs)
.org 0x200
fast_iret:
  iretq
.org 0x210
fast_ud:
  add qword ptr [rsp], 2
  iretq
.org 0x220
fast_pf:
  add qword ptr [rsp+8], 3
  add rsp, 8
  iretq

# Guest-registered (Xen-style) handlers: entered with Xen's bounce frame
# { rcx, r11, [err], rip, cs, rflags, rsp, ss }; record it, fix rip to `top`, iret hypercall.
.org 0x300
h_noerr:
  lea rdi, [rsp+16]
  jmp h_common
.org 0x310
h_err:
  lea rdi, [rsp+24]
h_common:
  rdtsc
  mov [MB+0x48], eax
  mov [MB+0x4c], edx
  mov r8, [rsp]
  mov r9, [rsp+8]
  xor ecx, ecx
2:
  mov rax, [rsp+rcx*8]
  mov [MB+0x100+rcx*8], rax
  inc ecx
  cmp ecx, 8
  jne 2b
  mov [MB+0x140], rdi
  mov eax, 0x30000
  mov [rdi], rax
  mov rsp, rdi
  push 0
  push r8
  push r9
  push rax
  out 0x12, al
  ud2

# Event callback: entered with { rcx, r11, rip, cs, rflags, rsp, ss }; timestamps its
# first instruction, returns to the interrupted context by the iret hypercall.
.org 0x400
cb_event:
  rdtsc
  mov [MB+0x50], eax
  mov [MB+0x54], edx
  inc qword ptr [MB+0x60]
  mov r8, [rsp]
  mov r9, [rsp+8]
  lea rdi, [rsp+16]
  mov rsp, rdi
  push 0
  push r8
  push r9
  push rax
  out 0x12, al
  ud2
