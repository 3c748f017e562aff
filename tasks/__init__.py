"""virt-revert, cluster side: Celery app, canvases, Python API and CLI.

Importable without libvirt-python: nothing here talks to a hypervisor.
"""
