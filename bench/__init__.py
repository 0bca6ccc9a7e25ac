"""sshfleet's benchmark harness: sshfleet side by side with Fabric, parallel-ssh, asyncssh, Mitogen and Ansible.

``python -m bench`` (what ``make bench`` runs) brings up its own testbed, runs every tool in its own worker
process (``bench.worker``) in alternating order, and writes ``bench/results/``. See bench/README.md.

This package must stay import-light: Mitogen ships ``bench.remote_fn`` and its parent packages to the hosts.
"""
