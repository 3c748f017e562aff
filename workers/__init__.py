"""virt-revert, host side: libvirt, qemu-img and the Celery worker bound to one libvirtd.

Deciding (``plan``, ``snapshot_xml``, ``qcow2``) is pure and importable
without libvirt-python; doing (``steps``, ``restore``, ``overlays``) touches
libvirt and files.
"""
