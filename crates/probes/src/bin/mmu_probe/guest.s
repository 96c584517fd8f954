.intel_syntax noprefix
.code64
top:
  out 0x10, al
  mov rax, [0x40000]
  mov rbx, [0x40008]
  cmp rax, 1
  je read
  cmp rax, 2
  je write
  cmp rax, 3
  je spin
  cmp rax, 4
  je wloop
  cmp rax, 5
  je write_read
  jmp top
read:
  mov rcx, [rbx]
  mov [0x40010], rcx
  jmp top
write:
  mov rcx, [0x40018]
  mov [rbx], rcx
  jmp top
spin:
  mov rcx, [rbx]
  mov [0x40010], rcx
  inc qword ptr [0x40020]
  cmp qword ptr [0x40028], 0
  je spin
  jmp top
wloop:
  mov rdx, [0x40030]
  mov rcx, [0x40018]
  mov rsi, [0x40038]
1:
  mov [rbx], rcx
  xchg rcx, rsi
  dec rdx
  jnz 1b
  jmp top
write_read:
  mov rcx, [0x40018]
  mov [rbx], rcx
  mov rdi, [0x40040]
  mov rcx, [rdi]
  mov [0x40010], rcx
  jmp top
