#!/bin/sh
# Regenerate the ktrace-symbols test fixtures. The compiled outputs are
# committed so tests do not need a compiler.
set -eu
cd "$(dirname "$0")"
CFLAGS="-fdebug-prefix-map=$(pwd)=testdata/symbols -g -O1 -gdwarf-5 -fno-pie -fno-stack-protector -fcf-protection=none -ffreestanding -fno-asynchronous-unwind-tables"
gcc $CFLAGS -c kernel_like.c -o kernel_like.o
gcc $CFLAGS -c percpu.c -o percpu.o
# A relocatable object like a module debug file (.ko): DWARF relocated by .rela.debug_*.
gcc $CFLAGS -c module_like.c -o module_like.ko
# A static, non-PIE ET_EXEC like vmlinux.
gcc -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-T,kernel_like.lds -o kernel_like.elf kernel_like.o percpu.o
# A stripped copy (no symbols) and a not-ELF file for error tests.
strip -o kernel_like.stripped kernel_like.elf
rm -f kernel_like.o percpu.o
