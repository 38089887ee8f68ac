#!/usr/bin/env bash
# benches/in_vm.sh — runs a command (a benchmark) as root in a qemu guest that sees this
# machine's files, for what the machine's own sandbox denies: above all more open files than
# its hard RLIMIT_NOFILE (raising it takes CAP_SYS_RESOURCE, which containers often lack),
# so that one gateway process can hold 100,000 idle connections.
#
# The guest boots Debian's kernel (linux-image-amd64, fetched once with apt-get download into
# VM_CACHE) from a small initramfs (a static busybox and the modules for virtio, 9p and
# overlayfs). Its root is this machine's / shared read-only over 9p, under a tmpfs overlay:
# the same binaries, scripts and libraries at the same paths, and whatever the command writes
# stays in the guest's memory and goes when it stops. Inside, as root, it raises
# RLIMIT_NOFILE to VM_NOFILE, brings up loopback, changes to the current directory and runs
# the command with this shell's exported environment. The command's output comes back on the
# guest's serial console; the script exits with the command's exit status.
#
# What the guest measures is the guest's: its own kernel (Debian's, not this machine's, with
# transparent huge pages set as here), its own loopback and VM_CPUS virtual CPUs. Memory
# figures (a process's RSS) are the process's own and compare with the host's. Speed does
# not: by default the CPUs are emulated (qemu's TCG, tens of times slower), because on the
# machines this was written on KVM is offered to containers but a guest hung in early boot
# under it; VM_ACCEL=kvm uses it where it works.
#
# Usage: benches/in_vm.sh COMMAND [ARG...]
#   e.g. IDLE_CONNS=100000 GATEWAY_BIN=target/release/examples/gateway \
#          benches/in_vm.sh benches/idle_sharded.sh
# Environment:
#   VM_MEMORY=4G       the guest's memory (qemu -m)
#   VM_CPUS=2          its virtual CPUs
#   VM_ACCEL=tcg       tcg (emulated, works anywhere) or kvm (needs a working /dev/kvm)
#   VM_NOFILE=1048576  RLIMIT_NOFILE (soft and hard) for the command
#   VM_TIMEOUT=3600    seconds after which a guest still running is stopped (an error)
#   VM_CACHE=~/.cache/caas-bench-vm   where the kernel package is kept
#   VM_KERNEL_DIR=     a tree with boot/vmlinuz-* and lib/modules/*/ to boot instead
#   KEEP=1             keep the temp dir (initramfs, console log)
# Needs qemu-system-x86_64 (Debian: qemu-system-x86), a static busybox (Debian:
# busybox-static), and apt-get and dpkg-deb unless VM_KERNEL_DIR is given. Booting takes a
# few seconds; 100,000 idle connections (benches/idle_sharded.sh) about four minutes.
set -euo pipefail

BENCH_NAME=in_vm
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac

VM_MEMORY=${VM_MEMORY:-4G}
VM_CPUS=${VM_CPUS:-2}
VM_ACCEL=${VM_ACCEL:-tcg}
VM_TIMEOUT=${VM_TIMEOUT:-3600}
VM_NOFILE=${VM_NOFILE:-1048576}
VM_CACHE=${VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caas-bench-vm}
KEEP=${KEEP:-0}
[[ $VM_CPUS =~ ^[1-9][0-9]*$ ]] || die "VM_CPUS takes a positive integer, got '$VM_CPUS'"
[[ $VM_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "VM_TIMEOUT takes whole seconds, got '$VM_TIMEOUT'"
[[ $VM_NOFILE =~ ^[1-9][0-9]*$ ]] || die "VM_NOFILE takes a positive integer, got '$VM_NOFILE'"
[[ $VM_MEMORY =~ ^[1-9][0-9]*[MG]?$ ]] || die "VM_MEMORY takes a size such as 4G or 4096M, got '$VM_MEMORY'"

case "$VM_ACCEL" in
  tcg) ;;
  kvm) [[ -r /dev/kvm && -w /dev/kvm ]] || die "VM_ACCEL=kvm: /dev/kvm is missing or not usable" ;;
  *) die "VM_ACCEL takes tcg or kvm, got '$VM_ACCEL'" ;;
esac
command -v qemu-system-x86_64 >/dev/null 2>&1 ||
  die "qemu-system-x86_64 is missing: apt-get install --no-install-recommends qemu-system-x86"
BUSYBOX=$(command -v busybox || true)
# ldd fails on a static binary.
if [[ -z $BUSYBOX ]] || ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "a static busybox is missing: apt-get install busybox-static"
fi

# --- the kernel and its modules ----------------------------------------------------------------

if [[ -z ${VM_KERNEL_DIR:-} ]]; then
  VM_KERNEL_DIR=$VM_CACHE/root
  if ! compgen -G "$VM_KERNEL_DIR/boot/vmlinuz-*" >/dev/null; then
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
      die "no kernel in $VM_KERNEL_DIR and no apt-get/dpkg-deb to fetch one: set VM_KERNEL_DIR"
    fi
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    [[ -n $pkg ]] || die "apt-cache names no kernel behind linux-image-amd64 (apt-get update?)"
    log "fetching $pkg into $VM_CACHE"
    mkdir -p "$VM_CACHE"
    (cd "$VM_CACHE" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) ||
      die "apt-get download $pkg failed"
    rm -rf "$VM_KERNEL_DIR.new"
    dpkg-deb -x "$VM_CACHE/${pkg}"_*.deb "$VM_KERNEL_DIR.new"
    rm -f "$VM_CACHE/${pkg}"_*.deb
    mv "$VM_KERNEL_DIR.new" "$VM_KERNEL_DIR"
  fi
fi
VMLINUZ=$(compgen -G "$VM_KERNEL_DIR/boot/vmlinuz-*" | sort -V | tail -n 1) ||
  die "no boot/vmlinuz-* under $VM_KERNEL_DIR"
MODULES=$VM_KERNEL_DIR/lib/modules/${VMLINUZ##*/vmlinuz-}
[[ -d $MODULES ]] || die "no modules for $VMLINUZ at $MODULES"
# In the order they load (each after what it depends on).
MODS=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
  netfs fscache 9pnet 9pnet_virtio 9p overlay)

make_workdir caas-in-vm
QEMU_PID="" TAIL_PID=""
# shellcheck disable=SC2329 # run by the EXIT trap
cleanup() {
  # shellcheck disable=SC2086 # empty when not running
  kill_and_reap 5 $QEMU_PID $TAIL_PID
  finish_workdir "the initramfs and the console log"
}
on_exit cleanup

# --- the initramfs -----------------------------------------------------------------------------

INITRD=$WORK/initrd
mkdir -p "$INITRD"/{bin,dev,proc,sys,mods,lower,rw,root}
cp "$BUSYBOX" "$INITRD/bin/busybox"
for m in "${MODS[@]}"; do
  ko=$(find "$MODULES/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n 1)
  [[ -n $ko ]] || die "module $m is not under $MODULES (is it built in? then drop it from MODS)"
  case "$ko" in
    *.xz) xz -dc "$ko" >"$INITRD/mods/$m.ko" ;;
    *.zst) zstd -qdc "$ko" >"$INITRD/mods/$m.ko" ;;
    *) cp "$ko" "$INITRD/mods/$m.ko" ;;
  esac
done
# The guest's PID 1: mounts the host's files and the overlay, runs the job in a chroot,
# prints its exit status on a line of its own and powers off. The job's path comes on the
# kernel command line.
cat >"$INITRD/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
fail() { echo "in_vm guest: \$*"; echo "in_vm: exit 125"; poweroff -f; }
for m in ${MODS[*]}; do insmod /mods/\$m.ko || fail "insmod \$m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=1048576,cache=loose host /lower ||
  fail "mounting the host's files failed"
mount -t tmpfs -o mode=0755 rw /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /root ||
  fail "the overlay failed"
mount -t proc proc /root/proc
mount -t sysfs sysfs /root/sys
mount -t devtmpfs dev /root/dev
mkdir -p /root/dev/pts /root/dev/shm
mount -t devpts devpts /root/dev/pts
mount -t tmpfs tmpfs /root/dev/shm
ip link set lo up
job=\$(sed -n 's/.*caas_job=\([^ ]*\).*/\1/p' /proc/cmdline)
chroot /root /bin/bash "\$job"
echo "in_vm: exit \$?"
poweroff -f
EOF
chmod +x "$INITRD/init"
(cd "$INITRD" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) >"$WORK/initrd.cpio" ||
  die "packing the initramfs failed"

# --- the job -----------------------------------------------------------------------------------

# In WORK, which the guest sees at the same path (through the overlay, as of the boot). Its
# path goes on the kernel command line, which splits at spaces.
JOB=$WORK/job.sh
[[ $JOB != *[[:space:]]* ]] || die "the temp dir's path has a space in it ($WORK): set TMPDIR"
{
  echo "# written by benches/in_vm.sh"
  export -p | grep -Ev '^declare -x (PWD|OLDPWD|SHLVL|_|TMPDIR)='
  echo "ulimit -Hn $VM_NOFILE && ulimit -Sn $VM_NOFILE || exit 125"
  printf 'cd %q || exit 125\n' "$PWD"
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} >"$JOB"

case "$VM_ACCEL" in
  tcg) ACCEL=(-accel "tcg,thread=multi" -cpu max) ;;
  kvm) ACCEL=(-accel kvm -cpu host) ;;
esac
# Transparent huge pages as on this machine (Debian's kernel defaults to `always`, which
# makes memory resident 2 MiB at a time and would move every RSS figure).
THP=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || true)
log "booting $(basename "$VMLINUZ") with $VM_CPUS CPUs and $VM_MEMORY; running: $*"
CONSOLE=$WORK/console.log
: >"$CONSOLE"
timeout "$VM_TIMEOUT" qemu-system-x86_64 "${ACCEL[@]}" -smp "$VM_CPUS" -m "$VM_MEMORY" \
  -nodefaults -display none -monitor none -no-reboot \
  -serial "file:$CONSOLE" \
  -kernel "$VMLINUZ" -initrd "$WORK/initrd.cpio" \
  -append "console=ttyS0 quiet loglevel=1 panic=-1 transparent_hugepage=${THP:-madvise} caas_job=$JOB" \
  -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap" \
  </dev/null >"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!
# Line by line as the guest writes (sed -u: not held in a pipe's buffer until the end).
tail -n +1 -f --pid="$QEMU_PID" "$CONSOLE" | sed -u -e 's/\r$//' -e '/^in_vm: exit /d' -e '/\] reboot: Power down$/d' &
TAIL_PID=$!
qemu_rc=0
wait "$QEMU_PID" || qemu_rc=$?
QEMU_PID=""
((qemu_rc != 124)) || die "the guest was still running after VM_TIMEOUT=$VM_TIMEOUT s; stopped it (console: $CONSOLE)"
((qemu_rc == 0)) || die "qemu failed: $(tail -n 5 "$WORK/qemu.log")"
wait "$TAIL_PID" || true
TAIL_PID=""
rc=$(tr -d '\r' <"$CONSOLE" | sed -n 's/^in_vm: exit \([0-9]*\)$/\1/p' | tail -n 1)
[[ -n $rc ]] || die "the guest stopped without the command's exit status (console: $CONSOLE)"
((rc == 0)) || log "the command exited with status $rc"
STATUS=0
exit "$rc"
