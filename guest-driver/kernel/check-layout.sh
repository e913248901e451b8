#!/usr/bin/env bash
# Checks that Rust's generated bindings lay out the kernel structures vpm.ko and the Rust
# abstractions it uses read (task_struct, file, vm_area_struct, miscdevice) as C does: a C probe
# module records the offsets, then a Rust probe module asserts the same offsets at compile time.
# A config can make them disagree (an empty but cacheline-aligned struct, see config-fragment.sh),
# and then Rust code silently reads the wrong fields.
# Usage: check-layout.sh <kernel build dir>
set -euo pipefail
tree=${1:?usage: check-layout.sh <kernel build dir>}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# struct:field pairs to compare.
FIELDS="
task_struct:mm task_struct:tasks task_struct:pid task_struct:thread
file:f_op file:f_flags file:private_data
vm_area_struct:vm_mm vm_area_struct:vm_page_prot vm_area_struct:vm_pgoff vm_area_struct:vm_file
miscdevice:fops miscdevice:this_device
"

mkdir -p "$work/c" "$work/rs"
{
  echo '#include <linux/module.h>'
  echo '#include <linux/sched.h>'
  echo '#include <linux/fs.h>'
  echo '#include <linux/mm_types.h>'
  echo '#include <linux/miscdevice.h>'
  for sf in $FIELDS; do
    s=${sf%%:*} f=${sf#*:}
    echo "const unsigned long vpm_probe_${s}__${f} = offsetof(struct $s, $f);"
  done
  echo 'MODULE_LICENSE("GPL");'
  echo 'MODULE_DESCRIPTION("VPM layout probe (C side)");'
} >"$work/c/probe_c.c"
echo 'obj-m := probe_c.o' >"$work/c/Kbuild"
make -s -C "$tree" M="$work/c" LLVM=-19 modules >"$work/c.log" 2>&1 || {
  cat "$work/c.log" >&2
  echo "check-layout: the C probe did not build" >&2
  exit 1
}

# The offsets, read from the object's .rodata.
llvm-objcopy-19 -O binary --only-section=.rodata "$work/c/probe_c.o" "$work/c/rodata.bin"
declare -A offset
while read -r addr _size _type name; do
  key=${name#vpm_probe_}
  offset[$key]=$(od -An -t u8 -j $((16#$addr)) -N 8 "$work/c/rodata.bin" | tr -d ' ')
done < <(llvm-nm-19 -S "$work/c/probe_c.o" | awk '$3 == "R" && $4 ~ /^vpm_probe_/')

{
  echo '// SPDX-License-Identifier: GPL-2.0'
  echo '//! VPM layout probe (Rust side): fails to compile where bindings and C disagree.'
  echo 'use kernel::{bindings, prelude::*};'
  echo 'module! { type: Probe, name: "probe_rs", authors: ["VPM"], description: "layout probe", license: "GPL", }'
  echo 'struct Probe;'
  echo 'impl kernel::Module for Probe { fn init(_m: &'"'"'static ThisModule) -> Result<Self> { Ok(Probe) } }'
  for sf in $FIELDS; do
    s=${sf%%:*} f=${sf#*:}
    want=${offset[${s}__${f}]:?no C offset for $s.$f}
    echo "const _: () = assert!(core::mem::offset_of!(bindings::$s, $f) == $want, \"bindings::$s.$f is not at C's offset $want\");"
  done
} >"$work/rs/probe_rs.rs"
echo 'obj-m := probe_rs.o' >"$work/rs/Kbuild"
if ! make -s -C "$tree" M="$work/rs" LLVM=-19 modules >"$work/rs.log" 2>&1; then
  grep -E "is not at C's offset|^error" "$work/rs.log" >&2 || cat "$work/rs.log" >&2
  echo "check-layout: Rust bindings disagree with C on the structures above" >&2
  exit 1
fi
echo "check-layout: $(echo $FIELDS | wc -w) fields agree between C and the Rust bindings" >&2
