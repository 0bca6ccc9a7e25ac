"""Internals of ``sshfleet.testbed``: machine plumbing (namespaces, bridge, processes) and sshd files.

Import the public API from ``sshfleet.testbed``; these modules may change.
"""
