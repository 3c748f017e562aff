"""The counter guest: a boot sector whose memory and disk prove a revert.

An idle SeaBIOS guest never changes its memory, so a test could not tell a
restored memory image from a fresh boot. This guest counts timer ticks at a
fixed physical address and writes the count to disk sector 1 about once a
second (see guest/counter.S). After a revert, the counter in memory must be
back near its value at snapshot time and the disk must match the snapshot.
"""

import hashlib
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

SOURCE = Path(__file__).with_name("guest") / "counter.S"
COUNTER_ADDR = 0x600
MEMORY_MAGIC = b"VRCT"
DISK_MAGIC = b"VRDK"
DISK_SECTOR = 1


class GuestError(RuntimeError):
    """The guest's memory or disk does not hold what the counter guest writes."""


def boot_sector() -> bytes:
    """Assemble counter.S (cached by source hash; binaries are never committed)."""
    source = SOURCE.read_bytes()
    cache = Path(tempfile.gettempdir()) / "virt-revert-guest"
    binary = cache / f"counter-{hashlib.sha256(source).hexdigest()[:16]}.bin"
    if not binary.exists():
        cache.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            obj, out = Path(tmp) / "counter.o", Path(tmp) / "counter.bin"
            subprocess.run(["as", "--32", str(SOURCE), "-o", str(obj)], check=True)
            subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x7c00",
                            "--oformat", "binary", str(obj), "-o", str(out)], check=True)
            out.replace(binary)
    data = binary.read_bytes()
    if len(data) != 512 or data[510:] != b"\x55\xaa":
        raise GuestError(f"{binary} is not a 512-byte boot sector")
    return data


def build_disk(path, size: str = "16M") -> Path:
    """Create a qcow2 image at path with the counter boot sector at sector 0."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(suffix=".raw") as raw:
        raw.write(boot_sector())
        raw.flush()
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
                        raw.name, str(path)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", str(path), size], check=True)
    path.chmod(0o644)
    return path


def domain_xml(name: str, disk_path, virt_type: str | None = None,
               memory_mib: int = 64) -> str:
    """A minimal domain booting the counter disk (virtio, target vda).

    No <graphics> (type='none' is invalid in libvirt 9.0) and no balloon, so
    the guest stays small. virt_type defaults to devstack.hosts.virt_type().
    Under this machine's nested KVM, SeaBIOS needs ~10 s to reach the boot
    sector (TCG: ~0.1 s), so tests that only need a running guest boot faster
    with virt_type='qemu'.
    """
    if virt_type is None:
        from devstack.hosts import virt_type as detect
        virt_type = detect()
    return f"""<domain type={quoteattr(virt_type)}>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={quoteattr(str(disk_path))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def read_counter(dom) -> int:
    """The tick counter in the running guest's memory."""
    import libvirt
    data = dom.memoryPeek(COUNTER_ADDR, 8, libvirt.VIR_MEMORY_PHYSICAL)
    if data[:4] != MEMORY_MAGIC:
        raise GuestError(f"no counter magic at {COUNTER_ADDR:#x} in {dom.name()}: "
                         f"{data[:4]!r} (guest not booted yet, or not the counter guest)")
    return struct.unpack_from("<I", data, 4)[0]


def read_disk_sector(image_path) -> tuple[int, int] | None:
    """(ticks, writes) from sector 1 of an image, or None when never written.

    Reads through the backing chain with qemu-img dd -U, so it is safe while
    a guest runs on the image (it may see a write in flight, never corrupt it).
    qemu-img 7.2's dd counts `skip` inside `count` (skip=1 count=1 copies
    nothing), so copy sectors 0..1 and keep the last.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sectors"
        subprocess.run(["qemu-img", "dd", "-U", "-O", "raw", "bs=512",
                        f"count={DISK_SECTOR + 1}", f"if={image_path}", f"of={out}"],
                       check=True, capture_output=True)
        data = out.read_bytes()[512 * DISK_SECTOR:]
    if data[:4] != DISK_MAGIC:
        return None
    return struct.unpack_from("<II", data, 4)


def read_disk_counter(image_path) -> int | None:
    """The tick count the guest last wrote to an image, or None."""
    sector = read_disk_sector(image_path)
    return None if sector is None else sector[0]


def _wait(read, at_least: int, timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    value = None
    while True:
        try:
            value = read()
        except GuestError:
            value = None
        if value is not None and value >= at_least:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} still {value} after {timeout}s, wanted >= {at_least}")
        time.sleep(0.1)


def wait_for_counter(dom, at_least: int, timeout: float = 20) -> int:
    """Poll the memory counter until it reaches at_least; returns the value."""
    return _wait(lambda: read_counter(dom), at_least, timeout,
                 f"memory counter of {dom.name()}")


def wait_for_disk_counter(image_path, at_least: int, timeout: float = 20) -> int:
    """Poll sector 1 of an image until its counter reaches at_least."""
    return _wait(lambda: read_disk_counter(image_path), at_least, timeout,
                 f"disk counter of {image_path}")
